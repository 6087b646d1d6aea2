#!/usr/bin/env node
// A kafkajs consumer-group member, driven by tests/e2e/test_groups_clients.py.
//
//   node group_consumer.js BOOTSTRAP GROUP TOPIC BATCH DELAY_MS
//
// Subscribes to TOPIC in GROUP (kafkajs's own JoinGroup/SyncGroup/Heartbeat/OffsetCommit/OffsetFetch),
// and for every batch: skips it if kafkajs marks it stale (the partition moved), prints its records, then
// commits the next offset synchronously (autoCommit off) — commit after processing — and heartbeats.
// SIGTERM disconnects
// (LeaveGroup). One JSON line per event on stdout, the same as tests/e2e/groups_worker.py:
//   {"ev":"assigned","parts":[...]}  {"ev":"recs","recs":[[p,o],...]}  {"ev":"commit_error",...}  {"ev":"closed"}

'use strict'

const { Kafka, logLevel } = require('kafkajs')

const [bootstrap, groupId, topic, batchArg, delayArg] = process.argv.slice(2)
const maxBatch = Number(batchArg || 100)
const delayMs = Number(delayArg || 0)

function emit (event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function main () {
  const kafka = new Kafka({
    clientId: 'tidelog-e2e-kafkajs-group',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    retry: { retries: 20, initialRetryTime: 100, maxRetryTime: 2000 }
  })
  const consumer = kafka.consumer({
    groupId,
    sessionTimeout: 6000,
    heartbeatInterval: 300,
    rebalanceTimeout: 20000,
    maxBytesPerPartition: 64 * 1024,
    maxWaitTimeInMs: 200, // fetches long-poll at most this long, so heartbeats (between fetches) stay frequent
    retry: { retries: 20, initialRetryTime: 100, maxRetryTime: 2000 }
  })
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    const parts = (e.payload.memberAssignment[topic] || []).slice().sort((a, b) => a - b)
    emit({ ev: 'assigned', parts, generation: e.payload.generationId || null })
  })
  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    try {
      await consumer.disconnect()
    } finally {
      emit({ ev: 'closed' })
      process.exit(0)
    }
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)

  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  await consumer.run({
    autoCommit: false,
    eachBatchAutoResolve: false,
    eachBatch: async ({ batch, isRunning, isStale, heartbeat, resolveOffset }) => {
      let messages = batch.messages
      while (messages.length > 0 && isRunning() && !isStale() && !stopping) {
        const chunk = messages.slice(0, maxBatch)
        messages = messages.slice(maxBatch)
        emit({ ev: 'recs', recs: chunk.map((m) => [batch.partition, Number(m.offset)]) })
        const next = String(Number(chunk[chunk.length - 1].offset) + 1)
        try {
          await consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: next }])
        } catch (e) {
          emit({ ev: 'commit_error', error: String(e) })
          return
        }
        resolveOffset(chunk[chunk.length - 1].offset) // kafkajs's own position follows what was committed
        if (delayMs > 0) await sleep(delayMs)
        // A fetched batch can hold thousands of records (a whole produced batch): keep the session alive.
        // A rebalance makes this throw, after the chunk above was committed; kafkajs then rejoins.
        await heartbeat()
      }
    }
  })
}

main().catch((e) => {
  process.stderr.write(`group_consumer failed: ${e && e.stack ? e.stack : e}\n`)
  process.exit(1)
})
