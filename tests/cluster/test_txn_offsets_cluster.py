"""Issue 14 on the three-broker dev cluster, the group side and the operator's tool.

* Transactional offsets across a group coordinator move: confluent-kafka's ``send_offsets_to_transaction`` leaves
  the group's offsets pending on its ``__consumer_offsets`` partition (OffsetFetch ``require_stable``:
  UNSTABLE_OFFSET_COMMIT; plain OffsetFetch: nothing); the partition then moves to another broker, which
  rebuilds the pending offsets from the log; the commit's marker goes to that new owner and makes them the
  group's committed offsets; a second move replays the marker too.
* ``tidelog transactions`` against the cluster: three transactions left open, coordinated by whichever brokers
  lead their ``__transaction_state`` partitions, are all listed (ListTransactions to every broker) with their
  coordinator; ``describe`` finds each through FindCoordinator; ``abort --start-offset`` on a partition led by a
  broker other than the bootstrap one sends WriteTxnMarkers to that leader and releases the partition.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, KafkaClient, request_module
from brokers.devcluster import DevCluster
from brokers.group_admin import fetch_offsets
from brokers.groups.records import partition_for
from brokers.handlers.base import make
from tests.e2e.broker_process import tidelog_command
from tests.e2e.helpers import create_topic
from tests.etcd_server import etcd_available

from .harness import leaders, running_cluster
from .moving import leader, move

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

NODES = (1, 2, 3)
OFFSETS_PARTITIONS = 3
CONFIGS = {"offsets.topic.num.partitions": str(OFFSETS_PARTITIONS), "transaction.state.log.num.partitions": "3"}
TXN_TIMEOUT_S = 60.0
OFFSET_FETCH = 9
WAIT_S = 60.0  # a hang guard for polling, never a timing assertion


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("txo-cluster"), configs=CONFIGS) as dev:
        yield dev


def _stable_fetch(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int, ErrorCode]]:
    """OffsetFetch v8 with require_stable, at the group's coordinator (found and retried as clients do)."""

    async def call(conn: Connection) -> tuple[dict[int, tuple[int, ErrorCode]], ErrorCode]:
        mod = request_module(OFFSET_FETCH, 8)
        resp: Any = await conn.send(make(mod.OffsetFetchRequest, require_stable=True, groups=(make(
            mod.OffsetFetchRequestGroup, group_id=group,
            topics=(make(mod.OffsetFetchRequestTopics, name=topic, partition_indexes=(0,)),)),)))
        g = resp.groups[0]
        return {int(p.partition_index): (int(p.committed_offset), p.error_code)
                for t in g.topics or () for p in t.partitions}, g.error_code

    async def run() -> dict[int, tuple[int, ErrorCode]]:
        async with KafkaClient(bootstrap, timeout=60) as client:
            return await client.group_call(group, call)

    return asyncio.run(run())


def _settled(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int, ErrorCode]]:
    """The stable fetch once the transaction's markers are written (the coordinator writes them after answering
    EndTxn, as Kafka does; until then the offsets are still pending: UNSTABLE_OFFSET_COMMIT)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = _stable_fetch(bootstrap, group, topic)
        if all(code != ErrorCode.unstable_offset_commit for _o, code in got.values()) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    async def run() -> dict[tuple[str, int], int]:
        async with KafkaClient(bootstrap, timeout=60) as client:
            return await fetch_offsets(client, group)

    return asyncio.run(run())


def test_pending_txn_offsets_follow_the_group_coordinator_moves(cluster: DevCluster) -> None:
    bootstrap = cluster.bootstrap
    source, sink = f"txo-in-{uuid.uuid4().hex[:6]}", f"txo-out-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, source, 1)
    create_topic(bootstrap, sink, 1)
    group = f"txo-group-{uuid.uuid4().hex[:6]}"
    offsets_partition = partition_for(group, OFFSETS_PARTITIONS)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"txo-{group}", "linger.ms": 0})
    try:
        producer.init_transactions(TXN_TIMEOUT_S)
        producer.begin_transaction()
        producer.produce(sink, value=b"out", partition=0)
        producer.send_offsets_to_transaction(
            [TopicPartition(source, 0, 42)], consumer.consumer_group_metadata(), TXN_TIMEOUT_S
        )
        assert _stable_fetch(bootstrap, group, source) == {0: (-1, ErrorCode.unstable_offset_commit)}
        assert _committed(bootstrap, group) == {}

        first, _ = leader(bootstrap, "__consumer_offsets", offsets_partition)
        second = next(n for n in NODES if n != first)
        move(bootstrap, "__consumer_offsets", offsets_partition, second)
        assert _stable_fetch(bootstrap, group, source) == {0: (-1, ErrorCode.unstable_offset_commit)}

        producer.commit_transaction(TXN_TIMEOUT_S)
        assert _settled(bootstrap, group, source) == {0: (42, ErrorCode.none)}
        assert _committed(bootstrap, group) == {(source, 0): 42}

        third = next(n for n in NODES if n not in (first, second))
        move(bootstrap, "__consumer_offsets", offsets_partition, third)  # replays the batch and its marker
        assert _stable_fetch(bootstrap, group, source) == {0: (42, ErrorCode.none)}
    finally:
        consumer.close()


def _cli(bootstrap: str, *args: str) -> Any:
    done = subprocess.run([*tidelog_command(), "transactions", "--bootstrap", bootstrap, *args, "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"tidelog transactions {' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout)


def test_cli_lists_every_coordinator_and_aborts_at_the_leader(cluster: DevCluster) -> None:
    topic = f"txo-cli-{uuid.uuid4().hex[:6]}"
    create_topic(cluster.bootstrap, topic, 3)
    owner = leaders(cluster.bootstrap, topic)
    ids = [f"txo-cli-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    producers = []
    for i, tid in enumerate(ids):
        p = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": tid, "linger.ms": 0})
        p.init_transactions(TXN_TIMEOUT_S)
        p.begin_transaction()
        p.produce(topic, value=f"open-{i}".encode(), partition=i)
        assert p.flush(TXN_TIMEOUT_S) == 0
        producers.append(p)

    state_leaders = leaders(cluster.bootstrap, "__transaction_state")
    via = cluster.broker(1).address  # one broker as the only bootstrap address
    listed = {t["transactional_id"]: t for t in _cli(via, "list", "--state", "Ongoing") if t["transactional_id"] in ids}
    assert sorted(listed) == sorted(ids)
    for i, tid in enumerate(ids):
        coordinator = state_leaders[partition_for(tid, 3)]
        assert listed[tid]["coordinator"] == coordinator
        described = _cli(via, "describe", "--transactional-id", tid)
        assert (described["coordinator"], described["state"]) == (coordinator, "Ongoing")
        assert described["partitions"] == [{"topic": topic, "partition": i}]

    for node in NODES:  # every open transaction is known to its coordinator, wherever that is: none hangs
        assert _cli(via, "find-hanging", "--broker-id", str(node), "--max-transaction-timeout", "0") == []

    far = next(p for p in range(3) if owner[p] != 1) if any(o != 1 for o in owner.values()) else 0
    (open_txn,) = [p for p in _cli(via, "describe-producers", "--topic", topic, "--partition", str(far))
                   if p["txn_start_offset"] is not None]
    assert open_txn["producer_id"] == listed[ids[far]]["producer_id"]
    aborted = _cli(via, "abort", "--topic", topic, "--partition", str(far), "--start-offset",
                   str(open_txn["txn_start_offset"]))
    assert aborted["error"] is None
    after = _cli(via, "describe-producers", "--topic", topic, "--partition", str(far))
    assert all(p["txn_start_offset"] is None for p in after)
    for p in producers:
        p.abort_transaction(TXN_TIMEOUT_S)
    assert [t for t in _cli(via, "list", "--state", "Ongoing") if t["transactional_id"] in ids] == []
