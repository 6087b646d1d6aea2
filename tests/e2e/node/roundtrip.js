#!/usr/bin/env node
// kafkajs against Tidelog, driven by tests/e2e/test_clients_roundtrip.py.
//
//   node roundtrip.js produce BOOTSTRAP TOPIC IN.jsonl OUT.json
//       Sends every record of IN.jsonl (one JSON object per line: partition, key, value,
//       headers [[k, v], ...], timestamp; bytes as base64) with kafkajs's producer, in order,
//       in batches; writes {"sent": n, "acks": [[partition, baseOffset, count], ...]} to OUT.json.
//
//   node roundtrip.js consume BOOTSTRAP TOPIC PARTITIONS OUT.jsonl
//       Reads each partition from offset 0 to its high watermark with kafkajs and writes one JSON
//       object per record. kafkajs's public consumer needs consumer groups (JoinGroup/SyncGroup...),
//       which Tidelog does not serve yet, so this uses kafkajs's own cluster/broker layer — the
//       same code its consumer runs underneath: Metadata, ListOffsets, and Fetch requests encoded
//       and decoded by kafkajs (record batches, headers, timestamps, CRC-bearing batch header).

'use strict'

const fs = require('fs')
const readline = require('readline')
const { Kafka, logLevel, Partitioners } = require('kafkajs')

const BATCH = 500

function client (bootstrap) {
  return new Kafka({
    clientId: 'tidelog-e2e-kafkajs',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    connectionTimeout: 10000,
    requestTimeout: 60000,
    retry: { retries: 10, initialRetryTime: 200, maxRetryTime: 5000 }
  })
}

async function readJsonl (path) {
  const out = []
  const rl = readline.createInterface({ input: fs.createReadStream(path), crlfDelay: Infinity })
  for await (const line of rl) {
    if (line.trim()) out.push(JSON.parse(line))
  }
  return out
}

function toMessage (r) {
  // Header order is kept: duplicate keys are adjacent in the input, so an array per key
  // reproduces the original sequence exactly.
  const headers = {}
  for (const [k, v] of r.headers) {
    const b = Buffer.from(v, 'base64')
    if (headers[k] === undefined) headers[k] = b
    else if (Array.isArray(headers[k])) headers[k].push(b)
    else headers[k] = [headers[k], b]
  }
  return {
    partition: r.partition,
    key: r.key === null ? null : Buffer.from(r.key, 'base64'),
    value: Buffer.from(r.value, 'base64'),
    headers,
    timestamp: String(r.timestamp)
  }
}

async function produce (bootstrap, topic, inPath, outPath) {
  const records = await readJsonl(inPath)
  const producer = client(bootstrap).producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    allowAutoTopicCreation: false
  })
  await producer.connect()
  const acks = []
  try {
    for (let i = 0; i < records.length; i += BATCH) {
      const messages = records.slice(i, i + BATCH).map(toMessage)
      const counts = {}
      for (const m of messages) counts[m.partition] = (counts[m.partition] || 0) + 1
      // acks: -1 (all) is kafkajs's default; stated explicitly.
      const res = await producer.send({ topic, acks: -1, messages })
      for (const r of res) {
        if (r.errorCode !== 0) throw new Error(`produce error ${JSON.stringify(r)}`)
        acks.push([r.partition, Number(r.baseOffset), counts[r.partition]])
      }
    }
  } finally {
    await producer.disconnect()
  }
  fs.writeFileSync(outPath, JSON.stringify({ sent: records.length, acks }))
}

function cluster (kafka) {
  // The Kafka client's private cluster factory (same one its consumer uses).
  const sym = Object.getOwnPropertySymbols(kafka).find(s => String(s).includes('createCluster'))
  if (!sym) throw new Error('kafkajs internals changed: no createCluster symbol')
  return kafka[sym]({ allowAutoTopicCreation: false, metadataMaxAge: 300000 })
}

function headersToList (h) {
  const out = []
  for (const [k, v] of Object.entries(h || {})) {
    for (const b of Array.isArray(v) ? v : [v]) out.push([k, b === null ? null : b.toString('base64')])
  }
  return out
}

async function consume (bootstrap, topic, nparts, outPath) {
  const kafka = client(bootstrap)
  const admin = kafka.admin()
  await admin.connect()
  const c = cluster(kafka)
  await c.connect()
  const out = fs.createWriteStream(outPath)
  let total = 0
  try {
    await c.addTargetTopic(topic)
    await c.refreshMetadata()
    const ends = {}
    for (const { partition, high } of await admin.fetchTopicOffsets(topic)) ends[partition] = Number(high)
    const deadline = Date.now() + 120000
    for (let p = 0; p < nparts; p++) {
      const leaders = c.findLeaderForPartitions(topic, [p])
      const nodeId = Object.keys(leaders)[0]
      const broker = await c.findBroker({ nodeId })
      let offset = 0
      while (offset < ends[p]) {
        if (Date.now() > deadline) throw new Error(`kafkajs fetch unfinished: partition ${p} at ${offset}/${ends[p]}`)
        const res = await broker.fetch({
          maxWaitTime: 500,
          minBytes: 1,
          maxBytes: 8 << 20,
          topics: [{ topic, partitions: [{ partition: p, fetchOffset: String(offset), maxBytes: 4 << 20 }] }]
        })
        for (const tr of res.responses) {
          for (const pr of tr.partitions) {
            if (pr.errorCode !== 0) throw new Error(`fetch error ${pr.errorCode} on ${topic}/${pr.partition}`)
            for (const m of pr.messages) {
              const o = Number(m.offset)
              if (o < offset || m.isControlRecord) continue // whole batches come back; skip what precedes
              if (o !== offset) throw new Error(`gap: expected offset ${offset}, got ${o} on partition ${p}`)
              out.write(JSON.stringify({
                partition: p,
                offset: o,
                key: m.key === null ? null : m.key.toString('base64'),
                value: m.value === null ? null : m.value.toString('base64'),
                headers: headersToList(m.headers),
                timestamp: Number(m.timestamp)
              }) + '\n')
              offset = o + 1
              total++
            }
          }
        }
      }
    }
  } finally {
    await new Promise(resolve => out.end(resolve))
    await c.disconnect()
    await admin.disconnect()
  }
  process.stderr.write(`kafkajs consumed ${total} records\n`)
}

async function main () {
  const [cmd, ...args] = process.argv.slice(2)
  if (cmd === 'produce') await produce(...args)
  else if (cmd === 'consume') await consume(args[0], args[1], Number(args[2]), args[3])
  else throw new Error(`usage: roundtrip.js produce|consume ...`)
}

main().catch(err => {
  console.error(err && err.stack ? err.stack : err)
  process.exit(1)
})
