"""Issue 10, must-show 5: scale out and in under load.

One DevCluster starting with 3 brokers. A confluent-kafka producer (acks=all, idempotent) writes numbered
records to a 12-partition topic at a steady rate the whole time.

* Scale out: a 4th broker joins (DevCluster.add_broker). Measured and printed: from its process start to
  Metadata (through broker 1) showing it leading its share of the 12-partition topic and of
  ``__consumer_offsets`` (every broker within one of every other by count, per topic). The issue's target is
  10 s; the assertion is only a generous hang guard (SHARE_GUARD_S) since this machine's two cores are shared.
* Scale in: SIGTERM of the controller (the hardest broker to lose: the controller itself must hand over
  the assignment while draining). Its partitions move away before it exits (its log says 0 partitions
  left), it exits 0, and the remaining three hold everything, balanced.

Throughout, the producer sees no delivery error and no fatal error; afterwards every acknowledged record is
read back exactly once (idempotence across the moves: no duplicate), in acknowledgement order per partition.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from brokers.devcluster import DevCluster
from tests.e2e.helpers import confluent_read, create_topic, high_watermarks
from tests.etcd_server import etcd_available

from .harness import OFFSETS_TOPIC, balanced, leaders, running_cluster, spread, tidelog_json, wait_balanced

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

TOPIC = "scale"
PARTS = 12
RATE = 500  # records/s
MAX_RECORDS = 200_000  # the producer's bound
SHARE_GUARD_S = 30.0  # hang guard; the figure is printed (target 10 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("scale")) as c:
        yield c


class LoadProducer(threading.Thread):
    """Numbered records at RATE/s, acks=all, idempotent; remembers acks (partition, offset, n) and errors."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(name="producer", daemon=True)
        self.bootstrap = bootstrap
        self.stop_event = threading.Event()
        self.acked: list[tuple[int, int, int]] = []
        self.delivery_errors: list[str] = []
        self.client_errors: list[KafkaError] = []
        self.sent = 0
        self.unflushed = -1

    def report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.delivery_errors.append(str(err))
        else:
            self.acked.append((msg.partition(), msg.offset(), int(msg.value())))

    def run(self) -> None:
        p = Producer({
            "bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
            "message.timeout.ms": 60_000, "on_delivery": self.report, "error_cb": self.client_errors.append,
        })  # fmt: skip
        for i in range(MAX_RECORDS):
            if self.stop_event.is_set():
                break
            p.produce(TOPIC, value=str(i).encode(), key=str(i).encode())
            self.sent += 1
            p.poll(1.0 / RATE)
        self.unflushed = p.flush(90)

    def acks_after(self, n: int, at_least: int, timeout: float = 30.0) -> None:
        """Wait (hang guard) until ``at_least`` more records than ``n`` are acknowledged."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < n + at_least and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)


def _both_balanced(bootstrap: str, offsets_parts: int, brokers: set[int]) -> bool:
    try:
        return balanced(leaders(bootstrap, TOPIC), PARTS, brokers) and balanced(
            leaders(bootstrap, OFFSETS_TOPIC), offsets_parts, brokers
        )
    except Exception:  # a broker between answers; ask again
        return False


def test_a_broker_joins_and_one_leaves_under_load(cluster: DevCluster) -> None:
    b1 = cluster.broker(1)
    create_topic(cluster.bootstrap, TOPIC, PARTS)
    offsets_parts = len(leaders(b1.address, OFFSETS_TOPIC))
    wait_balanced(b1.address, TOPIC, PARTS, {1, 2, 3})
    producer = LoadProducer(cluster.bootstrap)
    producer.start()
    try:
        producer.acks_after(0, RATE)

        # --- scale out: a 4th broker joins under load
        n = len(producer.acked)
        joined_at = time.monotonic()
        b4 = cluster.add_broker()
        ready_s = time.monotonic() - joined_at
        share_s = -1.0
        while time.monotonic() - joined_at < SHARE_GUARD_S:
            if _both_balanced(b1.address, offsets_parts, {1, 2, 3, 4}):
                share_s = time.monotonic() - joined_at
                break
            time.sleep(0.1)
        print(
            f"\nbroker {b4.node_id} joined: listed by every broker after {ready_s:.1f} s, owns its share after "
            f"{share_s:.1f} s (target 10 s): {TOPIC} {spread(leaders(b1.address, TOPIC))}, {OFFSETS_TOPIC} "
            f"{spread(leaders(b1.address, OFFSETS_TOPIC))}; {len(producer.acked) - n} records acknowledged meanwhile"
        )
        assert share_s >= 0, f"broker 4 did not own its share within {SHARE_GUARD_S} s"
        producer.acks_after(len(producer.acked), RATE)

        # --- scale in: SIGTERM of the controller under load
        controller = int(tidelog_json("cluster", "status", "--bootstrap", b1.address)["controller"])
        victim = cluster.broker(controller)
        rest = {b.node_id for b in cluster.brokers if b.node_id != controller}
        ask = cluster.broker(min(rest)).address
        n = len(producer.acked)
        term_at = time.monotonic()
        code = victim.stop()
        exit_s = time.monotonic() - term_at
        rebalanced_s = -1.0
        while time.monotonic() - term_at < SHARE_GUARD_S:
            if _both_balanced(ask, offsets_parts, rest):
                rebalanced_s = time.monotonic() - term_at
                break
            time.sleep(0.1)
        log = victim.run_log()
        left = re.findall(r"controlled shutdown of broker \d+: (\d+) partitions left after ([\d.]+) s", log)
        print(
            f"SIGTERM of broker {controller} (the controller): exit {code} after {exit_s:.1f} s, drained {left}, "
            f"the other three balanced after {rebalanced_s:.1f} s; {len(producer.acked) - n} records acknowledged "
            "meanwhile"
        )
        assert code == 0, log[-3000:]
        assert [x for x, _ in left] == ["0"], log[-3000:]
        assert rebalanced_s >= 0, f"the remaining brokers {rest} were not balanced within {SHARE_GUARD_S} s"
        producer.acks_after(len(producer.acked), RATE)
    finally:
        producer.stop_event.set()
        producer.join(120)

    fatal = [e for e in producer.client_errors if e.fatal()]
    kinds = collections.Counter(e.name() for e in producer.client_errors)
    print(f"producer: {producer.sent} sent, {len(producer.acked)} acknowledged, client errors by kind {dict(kinds)}")
    assert producer.unflushed == 0
    assert not producer.delivery_errors, producer.delivery_errors[:5]
    assert not fatal, fatal[:5]
    assert len(producer.acked) == producer.sent

    ends = {p: hw for p, (_lo, hw) in high_watermarks(ask, TOPIC, range(PARTS)).items()}
    got = confluent_read(ask, TOPIC, range(PARTS), start=0, until=ends)
    read: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for g in got:
        read[g.partition].append((g.offset, int(g.value or b"-1")))
    values = [v for rows in read.values() for _, v in rows]
    dupes = len(values) - len(set(values))
    print(f"read back {len(values)} records ({dupes} duplicates); high watermarks {ends}")
    assert dupes == 0
    by_partition: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for p, offset, v in producer.acked:
        by_partition[p].append((offset, v))
    for p, acks in by_partition.items():
        at = dict(read[p])
        missing = [(o, v) for o, v in acks if at.get(o) != v]
        assert not missing, f"partition {p}: {len(missing)} acknowledged records not at their offsets: {missing[:5]}"
    assert sorted(values) == sorted(v for _, _, v in producer.acked)
