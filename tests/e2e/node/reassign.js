#!/usr/bin/env node
// kafkajs's admin moving a partition on a Tidelog cluster, driven by tests/cluster/test_partition_tools_cluster.py.
//
//   node reassign.js BOOTSTRAP TOPIC PARTITION TARGET OUT.json
//       alterPartitionReassignments({topic, partition -> [TARGET]}), then listPartitionReassignments until
//       Metadata shows TARGET leading the partition and the move is no longer listed (60 s at most);
//       writes {"leader": id, "inFlight": [listed entries seen while moving], "listedAfter": [...]} to OUT.json.

'use strict'

const fs = require('fs')
const { Kafka, logLevel } = require('kafkajs')

const WAIT_MS = 60000

async function leaderOf (admin, topic, partition) {
  const { topics } = await admin.fetchTopicMetadata({ topics: [topic] })
  const found = topics[0].partitions.find(p => p.partitionId === partition)
  return found ? found.leader : -1
}

async function main () {
  const [bootstrap, topic, partitionArg, targetArg, out] = process.argv.slice(2)
  const partition = Number(partitionArg)
  const target = Number(targetArg)
  const kafka = new Kafka({
    clientId: 'tidelog-e2e-kafkajs-reassign',
    brokers: bootstrap.split(','),
    logLevel: logLevel.WARN,
    retry: { retries: 10, initialRetryTime: 200, maxRetryTime: 5000 }
  })
  const admin = kafka.admin()
  await admin.connect()
  try {
    await admin.alterPartitionReassignments({
      topics: [{ topic, partitionAssignment: [{ partition, replicas: [target] }] }]
    })
    const deadline = Date.now() + WAIT_MS
    const inFlight = []
    const wanted = [{ topic, partitions: [partition] }]
    let leader = -1
    while (Date.now() < deadline) {
      const listed = await admin.listPartitionReassignments({ topics: wanted })
      for (const t of listed.topics) inFlight.push(...t.partitions)
      leader = await leaderOf(admin, topic, partition)
      if (leader === target) break
    }
    let listedAfter = []
    while (Date.now() < deadline) {
      listedAfter = (await admin.listPartitionReassignments({ topics: wanted })).topics
      if (listedAfter.length === 0) break
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    fs.writeFileSync(out, JSON.stringify({ leader, inFlight, listedAfter }))
  } finally {
    await admin.disconnect()
  }
}

main().catch(e => {
  console.error(e)
  process.exit(1)
})
