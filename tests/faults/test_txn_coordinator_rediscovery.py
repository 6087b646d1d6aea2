"""librdkafka's send_offsets_to_transaction() stays live after the group coordinator's broker dies and returns.

Why this test exists: the exactly-once copier of tests/faults/test_txn_copy.py stopped for good (seed 14, ten
minutes) after a kill -9 of the broker leading the group's ``__consumer_offsets`` partition. The cause is in the
client, not the broker: librdkafka (2.16.0 here) caches the group coordinator's broker handle; when the killed
broker drops out of a Metadata answer (as Kafka's Metadata drops a dead broker) librdkafka decommissions that
handle, yet the cache keeps it, and its coordinator request waits for a state change of that dead handle which
never comes. ``rd_kafka_coord_req`` never checks its own timeout, and send_offsets_to_transaction() waits with
no timeout of its own for it, so the call blocks until *some other* broker connection of the producer changes
state (confluentinc/librdkafka issues 5511 and 5456, fixes proposed in pull requests 5512 and 5457). Meanwhile
the transaction coordinator rightly aborts the open transaction after transaction.timeout.ms.

The workaround the copier uses: ``connections.max.idle.ms`` on the transactional producer. A blocked producer is
idle, so its connections close after that long; each close is a broker state change, which re-runs the stuck
request, which asks FindCoordinator again and reaches the live coordinator. This test builds the situation
deterministically (a cached coordinator killed, dropped from Metadata by a produce that fails over, restarted)
and shows the call returning with the workaround; without it the call is still blocked after 45 s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from brokers.groups.records import partition_for
from tests.cluster.harness import leaders, running_cluster
from tests.e2e.helpers import create_topic
from tests.faults.harness import needs_etcd

pytestmark = [pytest.mark.faults, pytest.mark.slow, needs_etcd]  # ~20 s: make test-faults / test-all

IDLE_MS = 5000
"""What tests/faults/test_txn_copy.py gives its copier's producer."""
CALL_TIMEOUT_S = 10.0
HANG_GUARD_S = 45.0


def test_send_offsets_survives_a_decommissioned_group_coordinator(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "c", session_timeout_ms=3000) as cluster:
        bootstrap = cluster.bootstrap
        source, sink, group = "rd-a", "rd-b", "rd-group"
        create_topic(bootstrap, source, 3)
        create_topic(bootstrap, sink, 3)
        filler = Producer({"bootstrap.servers": bootstrap})
        for i in range(30):
            filler.produce(source, value=b"x", partition=i % 3)
        assert filler.flush(30) == 0
        producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "rd-tid",
                             "transaction.timeout.ms": 60_000, "connections.max.idle.ms": IDLE_MS})  # fmt: skip
        producer.init_transactions(30)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "isolation.level": "read_committed"})  # fmt: skip
        consumer.subscribe([source])
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 30 and time.monotonic() < deadline:  # joins the group: consumer_group_metadata() is real
            seen += sum(1 for m in consumer.consume(30, 1.0) if m.error() is None)
        assert seen == 30
        offsets = [TopicPartition(source, p, 10) for p in range(3)]

        # One committed transaction: the producer now caches the group's coordinator X.
        producer.begin_transaction()
        for p in range(3):
            producer.produce(sink, value=b"1", partition=p)
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        x = leaders(bootstrap, "__consumer_offsets")[partition_for(group, 50)]

        # The next one: X is killed; a produce to the sink partition X led fails over, and the Metadata the
        # producer asks for then lists no broker X (librdkafka decommissions its handle); X comes back.
        producer.begin_transaction()
        for p in range(3):
            producer.produce(sink, value=b"2", partition=p)
        assert producer.flush(30) == 0
        cluster.broker(x).kill9()
        for p in range(3):
            producer.produce(sink, value=b"3", partition=p)
        assert producer.flush(60) == 0
        time.sleep(1.0)
        cluster.broker(x).start()
        cluster.wait_ready(120)

        outcome: list[str] = []

        def send_offsets() -> None:
            try:
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), CALL_TIMEOUT_S)
                outcome.append("ok")
            except Exception as e:  # any answer is liveness; the transaction may have to be aborted
                outcome.append(repr(e))

        started = time.monotonic()
        caller = threading.Thread(target=send_offsets, daemon=True)
        caller.start()
        caller.join(HANG_GUARD_S)
        print(f"send_offsets_to_transaction returned {outcome} after {time.monotonic() - started:.1f} s")
        assert outcome, f"send_offsets_to_transaction still blocked after {HANG_GUARD_S:.0f} s"
        if outcome == ["ok"]:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
        consumer.close()
