#!/usr/bin/env node
// kafkajs against Tidelog's secure listeners, driven by tests/e2e/test_security_kafkajs.py.
//
//   node security.js CONFIG.json
//       CONFIG: {"brokers": ["host:port"], "ssl": {"ca": PATH, "cert": PATH?, "key": PATH?} | null,
//                "sasl": {"mechanism": "scram-sha-512" | "plain", "username", "password"} | null,
//                "topic": NAME}
//       Produces one record and reads it back (fetch from offset 0). Prints one JSON line:
//       {"ok": true} or {"ok": false, "error": NAME, "message": TEXT}.

'use strict'

const fs = require('fs')
const { Kafka, logLevel, Partitioners } = require('kafkajs')

async function main () {
  const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
  let ssl = false
  if (cfg.ssl) {
    ssl = { ca: [fs.readFileSync(cfg.ssl.ca)] }
    if (cfg.ssl.cert) {
      ssl.cert = fs.readFileSync(cfg.ssl.cert)
      ssl.key = fs.readFileSync(cfg.ssl.key)
    }
  }
  const kafka = new Kafka({
    clientId: 'tidelog-e2e-security',
    brokers: cfg.brokers,
    ssl,
    sasl: cfg.sasl || undefined,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 10000,
    requestTimeout: 30000,
    retry: { retries: 2, initialRetryTime: 200, maxRetryTime: 1000 }
  })
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  try {
    await producer.connect()
    const [ack] = await producer.send({ topic: cfg.topic, messages: [{ key: 'k', value: 'from kafkajs' }] })
    await producer.disconnect()
    const admin = kafka.admin()
    await admin.connect()
    const offsets = await admin.fetchTopicOffsets(cfg.topic)
    await admin.disconnect()
    const high = offsets.find(o => o.partition === ack.partition).high
    console.log(JSON.stringify({ ok: Number(high) > Number(ack.baseOffset) }))
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: e.name, message: e.message }))
    try { await producer.disconnect() } catch (_) {}
  }
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1) })
