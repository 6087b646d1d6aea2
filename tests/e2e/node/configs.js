#!/usr/bin/env node
// kafkajs's admin alterConfigs / describeConfigs against Tidelog, driven by tests/e2e/test_dynamic_configs.py
// and tests/cluster/test_dynamic_configs_cluster.py.
//
//   node configs.js BOOTSTRAP TOPIC BROKER_ID OUT.json
//       alterConfigs on the topic (retention.ms) and on broker BROKER_ID (log.retention.bytes), then
//       describeConfigs of both with synonyms; writes what came back, and the error of a refused change
//       (a static broker config), to OUT.json.

'use strict'

const fs = require('fs')
const { Kafka, logLevel, ConfigResourceTypes } = require('kafkajs')

async function main () {
  const [bootstrap, topic, brokerId, out] = process.argv.slice(2)
  const kafka = new Kafka({
    clientId: 'tidelog-e2e-kafkajs-configs',
    brokers: bootstrap.split(','),
    logLevel: logLevel.NOTHING,
    connectionTimeout: 10000,
    requestTimeout: 60000,
    retry: { retries: 3 }
  })
  const admin = kafka.admin()
  await admin.connect()
  const result = {}
  try {
    const altered = await admin.alterConfigs({
      validateOnly: false,
      resources: [
        { type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'retention.ms', value: '7200000' }] },
        { type: ConfigResourceTypes.BROKER, name: brokerId, configEntries: [{ name: 'log.retention.bytes', value: '5000000000' }] }
      ]
    })
    result.altered = altered.resources.map(r => [r.resourceName, r.errorCode])
    const described = await admin.describeConfigs({
      includeSynonyms: true,
      resources: [
        { type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms', 'retention.bytes'] },
        { type: ConfigResourceTypes.BROKER, name: brokerId, configNames: ['log.retention.bytes'] }
      ]
    })
    result.described = described.resources.map(r => ({
      name: r.resourceName,
      errorCode: r.errorCode,
      configs: Object.fromEntries(r.configEntries.map(c => [c.configName, {
        value: c.configValue,
        source: c.configSource,
        readOnly: c.readOnly,
        synonyms: c.configSynonyms.map(s => [s.configName, s.configValue, s.configSource])
      }]))
    }))
    try {
      await admin.alterConfigs({
        resources: [{ type: ConfigResourceTypes.BROKER, name: brokerId, configEntries: [{ name: 'num.partitions', value: '3' }] }]
      })
      result.refused = null
    } catch (e) {
      result.refused = { type: e.type || e.name, message: e.message }
    }
  } finally {
    await admin.disconnect()
  }
  fs.writeFileSync(out, JSON.stringify(result))
}

main().catch(e => { console.error(e); process.exit(1) })
