"""Issue 10, must-show 5: scale out and in under load.

One DevCluster starting with 3 brokers. A confluent-kafka producer (acks=all, idempotent) writes numbered
records to a 12-partition topic at a steady rate the whole time.

* Scale out: a 4th broker joins (DevCluster.add_broker). Measured and printed: from its process start to
  Metadata (through a live broker) showing it leading its share of the 12-partition topic and of
  ``__consumer_offsets`` (every broker within one of every other by count, per topic). The issue's target is
  10 s; the assertion is only a generous hang guard (SHARE_GUARD_S) since this machine's two cores are shared.
* Scale in: SIGTERM of the controller (the hardest broker to lose: the controller itself must hand over
  the assignment while draining). Its partitions move away before it exits (its log says 0 partitions
  left), it exits 0, and the remaining three hold everything, balanced.

Throughout, the producer sees no delivery error and no fatal error; afterwards every acknowledged record is
read back exactly once (idempotence across the moves: no duplicate), at the offset it was acknowledged at.
The slow variant repeats leave (SIGTERM of a seeded-random broker) and rejoin (the same node id) six times.
"""

from __future__ import annotations

import collections
import random
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

from .group_members import Member, Monitor
from .harness import OFFSETS_TOPIC, balanced, leaders, running_cluster, spread, tidelog_json, wait_balanced

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)")

TOPIC = "scale"
PARTS = 12
RATE = 500  # records/s
MAX_RECORDS = 1_000_000  # the producer's bound
SHARE_GUARD_S = 30.0  # hang guard; the figure is printed (target 10 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with running_cluster(tmp_path_factory.mktemp("scale")) as c:
        yield c


class LoadProducer(threading.Thread):
    """Numbered records (``size`` bytes) at ``rate``/s, acks=all, idempotent; remembers acks (partition, offset,
    n) and errors."""

    def __init__(self, bootstrap: str, topic: str, rate: int = RATE, size: int = 10) -> None:
        super().__init__(name="producer", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.rate = rate
        self.pad = b"x" * max(size - 10, 0)
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
            self.acked.append((msg.partition(), msg.offset(), int(msg.value()[:10])))

    def run(self) -> None:
        p = Producer({
            "bootstrap.servers": self.bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
            "message.timeout.ms": 60_000, "on_delivery": self.report, "error_cb": self.client_errors.append,
        })  # fmt: skip
        burst = max(1, self.rate // 100)  # paced in bursts every ~10 ms
        next_at = time.monotonic()
        while self.sent < MAX_RECORDS and not self.stop_event.is_set():
            for _ in range(burst):
                i = self.sent
                try:
                    p.produce(self.topic, value=b"%010d" % i + self.pad, key=str(i).encode())
                except BufferError:  # the client's queue is full: let it drain
                    break
                self.sent += 1
            next_at += burst / self.rate
            p.poll(max(next_at - time.monotonic(), 0))
        self.unflushed = p.flush(90)

    def acks_after(self, n: int, at_least: int, timeout: float = 30.0) -> None:
        """Wait (hang guard) until ``at_least`` more records than ``n`` are acknowledged."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < n + at_least and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)


def _both_balanced(bootstrap: str, topic: str, offsets_parts: int, brokers: set[int]) -> bool:
    try:
        return balanced(leaders(bootstrap, topic), PARTS, brokers) and balanced(
            leaders(bootstrap, OFFSETS_TOPIC), offsets_parts, brokers
        )
    except Exception:  # a broker between answers; ask again
        return False


def _until_balanced(bootstrap: str, topic: str, brokers: set[int], since: float) -> float:
    """Seconds from ``since`` until ``topic`` and ``__consumer_offsets`` are balanced over ``brokers`` (-1: not
    within SHARE_GUARD_S)."""
    offsets_parts = len(leaders(bootstrap, OFFSETS_TOPIC))
    while time.monotonic() - since < SHARE_GUARD_S:
        if _both_balanced(bootstrap, topic, offsets_parts, brokers):
            return time.monotonic() - since
        time.sleep(0.1)
    return -1.0


def _live(cluster: DevCluster) -> set[int]:
    return {b.node_id for b in cluster.brokers if b.alive()}


def join(cluster: DevCluster, topic: str, producer: LoadProducer, node_id: int | None = None) -> float:
    """Start a new broker (or restart ``node_id``) under load; seconds until it leads its share."""
    n = len(producer.acked)
    joined_at = time.monotonic()
    if node_id is None:
        b = cluster.add_broker()
    else:
        b = cluster.broker(node_id)
        b.start()
        cluster.wait_ready()
    ready_s = time.monotonic() - joined_at
    ask = cluster.broker(min(_live(cluster))).address
    share_s = _until_balanced(ask, topic, _live(cluster), joined_at)
    print(
        f"broker {b.node_id} joined: listed by every broker after {ready_s:.1f} s, owns its share after "
        f"{share_s:.1f} s (target 10 s): {topic} {spread(leaders(ask, topic))}, {OFFSETS_TOPIC} "
        f"{spread(leaders(ask, OFFSETS_TOPIC))}; {len(producer.acked) - n} records acknowledged meanwhile"
    )
    assert share_s >= 0, f"broker {b.node_id} did not own its share within {SHARE_GUARD_S} s"
    producer.acks_after(len(producer.acked), RATE)
    return share_s


def leave(cluster: DevCluster, topic: str, producer: LoadProducer, node_id: int) -> None:
    """SIGTERM broker ``node_id`` under load: it drains before it exits, and the rest rebalance."""
    victim = cluster.broker(node_id)
    rest = _live(cluster) - {node_id}
    ask = cluster.broker(min(rest)).address
    controller = int(tidelog_json("cluster", "status", "--bootstrap", ask)["controller"])
    n = len(producer.acked)
    term_at = time.monotonic()
    code = victim.stop()
    exit_s = time.monotonic() - term_at
    rebalanced_s = _until_balanced(ask, topic, rest, term_at)
    log = victim.run_log()
    left = re.findall(r"controlled shutdown of broker \d+: (\d+) partitions left after ([\d.]+) s", log)
    role = " (the controller)" if node_id == controller else ""
    print(
        f"SIGTERM of broker {node_id}{role}: exit {code} after {exit_s:.1f} s, drained {left}, the other "
        f"{len(rest)} balanced after {rebalanced_s:.1f} s; {len(producer.acked) - n} records acknowledged meanwhile"
    )
    assert code == 0, log[-3000:]
    assert [x for x, _ in left] == ["0"], log[-3000:]
    assert rebalanced_s >= 0, f"the remaining brokers {rest} were not balanced within {SHARE_GUARD_S} s"
    producer.acks_after(len(producer.acked), RATE)


def check_producer(cluster: DevCluster, topic: str, producer: LoadProducer) -> None:
    """No delivery or fatal error; every acknowledged record at its offset, exactly once."""
    fatal = [e for e in producer.client_errors if e.fatal()]
    kinds = collections.Counter(e.name() for e in producer.client_errors)
    print(f"producer: {producer.sent} sent, {len(producer.acked)} acknowledged, client errors by kind {dict(kinds)}")
    assert producer.unflushed == 0
    assert not producer.delivery_errors, producer.delivery_errors[:5]
    assert not fatal, fatal[:5]
    assert len(producer.acked) == producer.sent

    ask = cluster.broker(min(_live(cluster))).address
    ends = {p: hw for p, (_lo, hw) in high_watermarks(ask, topic, range(PARTS)).items()}
    got = confluent_read(ask, topic, range(PARTS), start=0, until=ends)
    read: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for g in got:
        read[g.partition].append((g.offset, int((g.value or b"-1")[:10])))
    values = [v for rows in read.values() for _, v in rows]
    dupes = len(values) - len(set(values))
    print(f"read back {len(values)} records ({dupes} duplicates)")
    assert dupes == 0
    by_partition: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for p, offset, v in producer.acked:
        by_partition[p].append((offset, v))
    for p, acks in by_partition.items():
        at = dict(read[p])
        missing = [(o, v) for o, v in acks if at.get(o) != v]
        assert not missing, f"partition {p}: {len(missing)} acknowledged records not at their offsets: {missing[:5]}"
    assert sorted(values) == sorted(v for _, _, v in producer.acked)


def test_a_broker_joins_and_the_controller_leaves_under_load(cluster: DevCluster) -> None:
    topic = TOPIC
    create_topic(cluster.bootstrap, topic, PARTS)
    wait_balanced(cluster.broker(1).address, topic, PARTS, {1, 2, 3})
    producer = LoadProducer(cluster.bootstrap, topic)
    producer.start()
    try:
        producer.acks_after(0, RATE)
        print()
        join(cluster, topic, producer)  # scale out: a 4th broker
        controller = int(tidelog_json("cluster", "status", "--bootstrap", cluster.broker(1).address)["controller"])
        leave(cluster, topic, producer, controller)  # scale in: SIGTERM of the controller
    finally:
        producer.stop_event.set()
        producer.join(120)
    check_producer(cluster, topic, producer)


@pytest.mark.slow
def test_brokers_leave_and_rejoin_under_load_repeatedly(cluster: DevCluster) -> None:
    """Six rounds: SIGTERM of a seeded-random live broker, then it starts again and takes its share back. A
    consumer group of three reads along with commits (its coordinator moves with every round that hits it):
    every acknowledged record consumed, committed offsets never backwards."""
    rng = random.Random(10)
    topic, group = f"{TOPIC}-cycles", "scale-cycles"
    create_topic(cluster.bootstrap, topic, PARTS)
    live = _live(cluster)
    wait_balanced(cluster.broker(min(live)).address, topic, PARTS, live)
    everyone = ",".join(b.address for b in cluster.brokers)
    producer = LoadProducer(everyone, topic, rate=5000, size=1000)  # 5 MB/s
    consumed: list[int] = []
    stop_members = threading.Event()
    members = [Member(f"member-{i}", everyone, topic, group, consumed, stop_members) for i in range(3)]
    monitor = Monitor(everyone, topic, PARTS, group, stop_members)
    for t in (producer, *members, monitor):
        t.start()
    shares: list[float] = []
    try:
        try:
            producer.acks_after(0, RATE)
            print()
            for stopped in sorted(b.node_id for b in cluster.brokers if not b.alive()):
                shares.append(join(cluster, topic, producer, stopped))  # back to full strength first
            for _ in range(6):
                victim = rng.choice(sorted(_live(cluster)))
                leave(cluster, topic, producer, victim)
                shares.append(join(cluster, topic, producer, victim))
        finally:
            producer.stop_event.set()
            producer.join(120)
        want = {v for _, _, v in producer.acked}
        deadline = time.monotonic() + 120
        while not want <= set(consumed) and time.monotonic() < deadline:  # hang guard
            time.sleep(0.2)
        time.sleep(1.0)  # a last commit round
    finally:
        stop_members.set()
        for t in (*members, monitor):
            t.join(60)
    print(f"seconds to own its share after (re)joining: {[round(s, 1) for s in shares]}")
    check_producer(cluster, topic, producer)
    assert all(m.error is None for m in members), [m.error for m in members]
    commit_errors = sorted({e for m in members for e in m.commit_errors})
    print(
        f"group: consumed {len(consumed)} ({len(consumed) - len(set(consumed))} duplicates), commits "
        f"{sum(m.commits for m in members)}, failed commits {sum(len(m.commit_errors) for m in members)} "
        f"{commit_errors[:3]}, assignments {[m.rebalances for m in members]}, committed offsets read "
        f"{monitor.reads} times"
    )
    assert not monitor.backwards, monitor.backwards[:10]
    skipped = want - set(consumed)
    assert not skipped, f"{len(skipped)} acknowledged records never consumed by the group"
    assert set(consumed) <= want
