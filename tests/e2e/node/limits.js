#!/usr/bin/env node
// kafkajs against Tidelog's fetch limits and topic name checks, driven by tests/e2e/test_fetch_limits.py
// and tests/e2e/test_topic_names.py.
//
//   node limits.js consume BOOTSTRAP TOPIC GROUP MAX_BYTES MAX_BYTES_PER_PARTITION OUT.jsonl
//       kafkajs's own consumer (group GROUP, fromBeginning) with maxBytes / maxBytesPerPartition reads every
//       partition to the end offsets it had at start; one line per record: [partition, offset, key, sha1(value)].
//
//   node limits.js produce BOOTSTRAP NAMES.json OUT.json
//       For each topic name of NAMES.json (a JSON list), one producer.send of one record; writes
//       [{name, ok, type, message, ms}] (the error kafkajs raised and the time taken).

'use strict'

const crypto = require('crypto')
const fs = require('fs')
const { Kafka, logLevel } = require('kafkajs')

function client (bootstrap) {
  return new Kafka({
    clientId: 'tidelog-e2e-kafkajs-limits',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 10000,
    requestTimeout: 60000,
    retry: { retries: 5, initialRetryTime: 200, maxRetryTime: 2000 }
  })
}

async function consume (bootstrap, topic, groupId, maxBytes, maxBytesPerPartition, outPath) {
  const kafka = client(bootstrap)
  const admin = kafka.admin()
  await admin.connect()
  const ends = {}
  for (const { partition, high } of await admin.fetchTopicOffsets(topic)) ends[partition] = Number(high)
  await admin.disconnect()
  const consumer = kafka.consumer({ groupId, maxBytes, maxBytesPerPartition, maxWaitTimeInMs: 200 })
  const out = []
  const next = {}
  for (const p of Object.keys(ends)) next[p] = 0
  const done = () => Object.keys(ends).every(p => next[p] >= ends[p])
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  let finish
  const finished = new Promise(resolve => { finish = resolve })
  const timer = setTimeout(() => finish(new Error(`kafkajs consume unfinished: ${JSON.stringify(next)} / ${JSON.stringify(ends)}`)), 180000)
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      const o = Number(message.offset)
      if (o !== next[partition]) throw new Error(`partition ${partition}: expected offset ${next[partition]}, got ${o}`)
      out.push([partition, o, message.key.toString(), crypto.createHash('sha1').update(message.value).digest('hex')])
      next[partition] = o + 1
      if (done()) finish(null)
    }
  })
  if (done()) finish(null)
  const err = await finished
  clearTimeout(timer)
  await consumer.disconnect()
  if (err) throw err
  fs.writeFileSync(outPath, out.map(r => JSON.stringify(r)).join('\n') + '\n')
}

async function produce (bootstrap, namesPath, outPath) {
  const names = JSON.parse(fs.readFileSync(namesPath, 'utf8'))
  const producer = client(bootstrap).producer({ allowAutoTopicCreation: true })
  await producer.connect()
  const results = []
  try {
    for (const name of names) {
      const t0 = Date.now()
      try {
        await producer.send({ topic: name, messages: [{ value: 'x' }] })
        results.push({ name, ok: true, ms: Date.now() - t0 })
      } catch (e) {
        // kafkajs's retrier re-wraps a non-retriable protocol error, keeping only its message
        results.push({ name, ok: false, type: e.type || e.name, message: String(e.message), ms: Date.now() - t0 })
      }
    }
  } finally {
    await producer.disconnect()
  }
  fs.writeFileSync(outPath, JSON.stringify(results))
}

async function main () {
  const [cmd, ...args] = process.argv.slice(2)
  if (cmd === 'consume') await consume(args[0], args[1], args[2], Number(args[3]), Number(args[4]), args[5])
  else if (cmd === 'produce') await produce(...args)
  else throw new Error('usage: limits.js consume|produce ...')
}

main().catch(err => {
  console.error(err && err.stack ? err.stack : err)
  process.exit(1)
})
