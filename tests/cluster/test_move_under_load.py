"""Must-show 2 of issue 10: a partition moves back and forth between two brokers while a confluent-kafka
producer (acks=all, idempotent) sends to it at a steady rate.

Nothing acknowledged is lost, nothing is written twice, offsets are contiguous, and every acknowledged value is
at the offset its delivery report gave. The client-visible pause of each move - the longest gap between two
consecutive delivery reports around the move (last ack before -> first ack after) - is printed as p50/p99/max
(measured, not asserted). 10 moves in the fast suite, 100 in the slow one.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from brokers.devcluster import DevCluster
from tests.cluster.moving import check_history, high_watermark, move, pauses, read_partition, summary
from tests.e2e.helpers import create_topic
from tests.etcd_server import etcd_available

confluent_kafka = pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.skipif(not etcd_available(), reason="needs the etcd binary")

RATE_INTERVAL_S = 0.005  # ~200 records/s
SETTLE_ACKS = 20  # acks after a move completes before the next move is asked for
WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(tmp_path_factory.mktemp("moveload"), brokers=2, bookies=3) as c:
        yield c


class SteadyProducer:
    """A thread producing numbered values to one partition every RATE_INTERVAL_S; records each delivery report
    (monotonic time, offset, value) and each error."""

    def __init__(self, bootstrap: str, topic: str, partition: int, **conf: Any) -> None:
        from confluent_kafka import Producer

        self.topic, self.partition = topic, partition
        self.acks: list[tuple[float, int, bytes]] = []
        self.errors: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 1,
            "message.timeout.ms": 120_000, **conf,
        })  # fmt: skip
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.acks.append((time.monotonic(), int(msg.offset()), bytes(msg.value())))

    def _run(self) -> None:
        next_at = time.monotonic()
        for i in range(10_000_000):
            if self._stop.is_set():
                break
            self._producer.produce(self.topic, value=b"v%08d" % i, partition=self.partition, on_delivery=self._report)
            self.sent += 1
            next_at += RATE_INTERVAL_S
            self._producer.poll(max(next_at - time.monotonic(), 0))
        self._producer.flush(WAIT_S)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S + 30)

    def wait_acks(self, n: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.acks) < n and not self.errors and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.acks) >= n, f"only {len(self.acks)} acks, errors {self.errors[:3]}"


def move_back_and_forth(cluster: DevCluster, topic: str, moves: int) -> None:
    create_topic(cluster.bootstrap, topic, partitions=1)
    producer = SteadyProducer(cluster.bootstrap, topic, 0)
    producer.start()
    windows: list[tuple[float, float]] = []
    took: list[float] = []
    try:
        producer.wait_acks(50)
        from tests.cluster.moving import leader

        owner = leader(cluster.bootstrap, topic, 0)[0]
        other = 1 if owner == 2 else 2
        for _ in range(moves):
            started = time.monotonic()
            seconds, _epoch = move(cluster.bootstrap, topic, 0, other)
            took.append(seconds)
            producer.wait_acks(len(producer.acks) + SETTLE_ACKS)
            windows.append((started, time.monotonic()))
            owner, other = other, owner
    finally:
        producer.stop()
    assert not producer.errors, producer.errors[:5]
    ack_times = [t for t, _, _ in producer.acks]
    gaps = pauses(ack_times, windows)
    baseline = summary([b - a for a, b in itertools.pairwise(ack_times)])
    print(f"\n{moves} moves, {len(producer.acks)} records acknowledged of {producer.sent} sent")
    print(summary(took).line("move request -> Metadata shows the new leader"))
    print(summary(gaps).line("client-visible pause per move (last ack before -> first ack after)"))
    print(baseline.line("gap between consecutive acks, whole run"))

    end = high_watermark(cluster.bootstrap, topic, 0)
    read = read_partition(cluster.bootstrap, topic, 0, end)
    acked = [(o, v) for _, o, v in producer.acks]
    problems = check_history(acked, read)
    print(f"log: {len(read)} records, offsets {read[0][0]}..{read[-1][0]}; acknowledged {len(acked)}")
    assert not problems, problems[:10]
    assert len(read) == end and len(acked) == producer.sent
    assert [v for _, v in read] == [b"v%08d" % i for i in range(len(read))]  # in order, none twice, none lost


def test_ten_moves_under_a_steady_idempotent_producer(cluster: DevCluster) -> None:
    move_back_and_forth(cluster, "moving-10", 10)


@pytest.mark.slow
def test_hundred_moves_under_a_steady_idempotent_producer(cluster: DevCluster) -> None:
    move_back_and_forth(cluster, "moving-100", 100)
