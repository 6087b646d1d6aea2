"""A real cluster end to end: three ``tidelog broker`` processes, three bookies, etcd and moto S3 (started by
brokers/devcluster.py), driven by confluent-kafka.

* a 12-partition topic spreads over the three brokers (max - min <= 1 by count);
* produce and consume byte-exact through any bootstrap broker;
* kill -9 of a broker: once its lease expires its partitions move to the others and serve again, and
  nothing acknowledged is lost;
* SIGTERM of a broker (controlled shutdown): its partitions move away before it exits.
"""

from __future__ import annotations

import collections
import concurrent.futures
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.devcluster import DevCluster
from tests.cluster import harness
from tests.etcd_server import etcd_available

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

pytestmark = pytest.mark.skipif(not etcd_available(), reason="needs the etcd binary")

SESSION_TIMEOUT_MS = 3000
TOPIC = "orders"
PARTITIONS = 12
WAIT_S = 45.0  # hang guard for each convergence below (they take a few seconds)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    dev = DevCluster(
        tmp_path / "cluster", brokers=3, bookies=3,
        broker_args=["--config", f"broker.session.timeout.ms={SESSION_TIMEOUT_MS}"],
    )  # fmt: skip
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


def _wait_leaders(bootstrap: str, allowed: set[int]) -> dict[int, int]:
    """Until every partition of TOPIC has a leader among ``allowed``, as ``bootstrap`` sees it."""
    return harness.wait_leaders(bootstrap, TOPIC, PARTITIONS, allowed, WAIT_S)


def _produce(bootstrap: str, start: int, count: int, pace_s: float = 0.0) -> dict[int, list[bytes]]:
    """Produce ``count`` messages (acks=all, idempotent, ``pace_s`` apart); returns the acknowledged values by
    partition."""
    acked: dict[int, list[bytes]] = collections.defaultdict(list)
    errors: list[str] = []

    def done(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acked[msg.partition()].append(msg.value())  # type: ignore[attr-defined]

    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
        "message.timeout.ms": 40_000,
    })  # fmt: skip
    for i in range(start, start + count):
        value = f"value-{i:06d}-".encode() + bytes(range(256))[: i % 200]
        producer.produce(TOPIC, value=value, key=f"key-{i}".encode(), on_delivery=done)
        producer.poll(pace_s)
    assert producer.flush(60) == 0
    assert not errors, errors[:5]
    return acked


def _consume_all(bootstrap: str, expected: int) -> dict[int, list[bytes]]:
    """Every message of TOPIC from the beginning, by partition (read until ``expected`` are seen)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"check-{time.monotonic_ns()}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })  # fmt: skip
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    got: dict[int, list[bytes]] = collections.defaultdict(list)
    seen = 0
    deadline = time.monotonic() + WAIT_S
    try:
        while seen < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            got[msg.partition()].append(msg.value())
            seen += 1
    finally:
        consumer.close()
    return got


def _merge(into: dict[int, list[bytes]], more: dict[int, list[bytes]]) -> None:
    for p, values in more.items():
        into.setdefault(p, []).extend(values)


def _check_nothing_lost(acked: dict[int, list[bytes]], got: dict[int, list[bytes]]) -> None:
    """Every acknowledged value is there, in order per partition (a retried batch may add duplicates)."""
    for p, values in acked.items():
        read = got.get(p, [])
        it = iter(read)
        missing = [v for v in values if not any(r == v for r in it)]
        assert not missing, f"partition {p}: {len(missing)} acknowledged values missing or out of order"


def test_cluster_spreads_serves_and_moves_partitions(cluster: DevCluster) -> None:
    b1, b2, b3 = cluster.broker(1), cluster.broker(2), cluster.broker(3)
    admin = AdminClient({"bootstrap.servers": b1.address})
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
    futures[TOPIC].result(30)

    leaders = _wait_leaders(b2.address, {1, 2, 3})
    counts = collections.Counter(leaders.values())
    print("partitions per broker:", dict(sorted(counts.items())))
    assert set(counts) == {1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1, counts

    # produce through one broker, consume through another: byte-exact, in order
    acked = _produce(b3.address, 0, 600)
    got = _consume_all(b1.address, 600)
    assert got == acked

    # kill -9 while a producer sends: the lease expires, the partitions move to the two others and serve
    # again; every message the producer saw acknowledged is there
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        during = pool.submit(_produce, f"{b1.address},{b2.address}", 600, 300, 0.01)
        time.sleep(1.0)
        killed_at = time.monotonic()
        b3.kill9()
        _wait_leaders(b1.address, {1, 2})
        print(f"partitions of the killed broker serving elsewhere after {time.monotonic() - killed_at:.1f} s")
        _merge(acked, during.result(90))
    got = _consume_all(b2.address, 900)
    _check_nothing_lost(acked, got)

    # SIGTERM: controlled shutdown moves the partitions away before the broker exits
    assert b2.stop() == 0
    log = b2.log_path.read_text(errors="replace")
    left = re.findall(r"controlled shutdown of broker 2: (\d+) partitions left", log)
    assert left == ["0"], log[-3000:]
    assert "released orders/" in log
    leaders = _wait_leaders(b1.address, {1})
    _merge(acked, _produce(b1.address, 900, 100))
    got = _consume_all(b1.address, 1000)
    _check_nothing_lost(acked, got)


def _wait_balanced(bootstrap: str, brokers: set[int]) -> dict[int, int]:
    """Until TOPIC's partitions are led by exactly ``brokers``, spread max - min <= 1."""
    return harness.wait_balanced(bootstrap, TOPIC, PARTITIONS, brokers, WAIT_S)


def _group_consume(bootstrap: str, group: str, expected: int) -> dict[int, list[bytes]]:
    """Consume ``expected`` messages as a member of ``group`` (subscribe), commit them, leave."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
    })  # fmt: skip
    consumer.subscribe([TOPIC])
    got: dict[int, list[bytes]] = collections.defaultdict(list)
    seen = 0
    deadline = time.monotonic() + WAIT_S
    try:
        while seen < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            got[msg.partition()].append(msg.value())
            seen += 1
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return got


@pytest.mark.slow  # make test: the nemesis run pauses owners; test_deposed_owner.py checks the fencing
def test_a_paused_broker_fences_itself_and_takes_partitions_again(cluster: DevCluster) -> None:
    """SIGSTOP past the lease ttl: the others take its partitions; on SIGCONT it finds its lease lost, stops
    serving, registers again, and the controller gives it its share back. A consumer group's committed
    offsets survive the moves of ``__consumer_offsets`` partitions."""
    b1, b2, b3 = cluster.broker(1), cluster.broker(2), cluster.broker(3)
    admin = AdminClient({"bootstrap.servers": b1.address})
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])[TOPIC].result(30)
    _wait_balanced(b1.address, {1, 2, 3})
    acked = _produce(b1.address, 0, 300)
    assert _group_consume(b2.address, "g1", 300) == acked

    b3.pause()
    try:
        _wait_leaders(b1.address, {1, 2})
        new = _produce(f"{b1.address},{b2.address}", 300, 200)
        _merge(acked, new)
    finally:
        b3.resume()
    _wait_balanced(b1.address, {1, 2, 3})
    log = b3.log_path.read_text(errors="replace")
    assert "fenced itself" in log and "registered again" in log, log[-3000:]

    # the group resumes from its committed offsets: exactly the messages produced meanwhile
    assert _group_consume(b3.address, "g1", 200) == new
    _merge(acked, _produce(b3.address, 500, 100))
    _check_nothing_lost(acked, _consume_all(b2.address, 600))
