"""Must-show 3 of issue 10: moving a partition copies no data.

A partition is filled with 10 MB (fast suite), 1 GB and 5 GB (slow), most of it offloaded to the object store
(moto S3; ``ledger.rollover.bytes`` is small, so ledgers close and are offloaded as segments while the producer
runs), then moved to the other broker. Printed per size: the move's duration (request -> Metadata shows the new
leader) and, over the move and over a settle time after it, the bytes the bookie processes and the moto process read and
wrote and the object-store requests made, next to the same figures over an idle window of the same length
(the noise: lease renewals, the controller, other partitions).

The counters are the kernel's per-process I/O counters (/proc/PID/io: ``rchar``/``wchar`` = bytes through
read/write system calls, sockets and files alike; ``read_bytes``/``write_bytes`` = bytes from/to the block
device), so they count everything the bookies and the object store do, whoever asks. Object-store requests are
counted from moto's request log. Nothing is asserted about time (measured, not asserted); the byte figures
are asserted to be far below the partition's size.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from brokers.devcluster import DevCluster, Proc
from tests.cluster.moving import high_watermark, leader, move, read_partition
from tests.e2e.helpers import create_topic
from tests.etcd_server import etcd_available

confluent_kafka = pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.skipif(not etcd_available(), reason="needs the etcd binary")

ROLLOVER_BYTES = 8 << 20
VALUE_BYTES = 100_000
SETTLE_S = 2.0
MB = 1 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(
        tmp_path_factory.mktemp("zerocopy"), brokers=2, bookies=3,
        broker_args=["--config", f"ledger.rollover.bytes={ROLLOVER_BYTES}"],
    ) as c:  # fmt: skip
        yield c


@dataclass(frozen=True)
class Io:
    rchar: int = 0
    wchar: int = 0
    read_bytes: int = 0
    write_bytes: int = 0

    def __sub__(self, other: Io) -> Io:
        return Io(*(a - b for a, b in zip(self.row(), other.row(), strict=True)))

    def __add__(self, other: Io) -> Io:
        return Io(*(a + b for a, b in zip(self.row(), other.row(), strict=True)))

    def row(self) -> tuple[int, int, int, int]:
        return self.rchar, self.wchar, self.read_bytes, self.write_bytes

    def text(self) -> str:
        return (
            f"syscall read {self.rchar:,} B, write {self.wchar:,} B; "
            f"disk read {self.read_bytes:,} B, write {self.write_bytes:,} B"
        )


def proc_io(procs: list[Proc]) -> Io:
    total = Io()
    for p in procs:
        fields = {}
        for line in Path(f"/proc/{p.pid}/io").read_text().splitlines():
            k, v = line.split(":")
            fields[k] = int(v)
        total = total + Io(fields["rchar"], fields["wchar"], fields["read_bytes"], fields["write_bytes"])
    return total


def s3_requests(cluster: DevCluster) -> dict[str, int]:
    assert cluster.moto is not None
    log = cluster.moto.log_path.read_text(errors="replace")
    return {verb: log.count(f"{verb} /") for verb in ("GET", "PUT", "HEAD", "DELETE", "POST")}


@dataclass(frozen=True)
class Counters:
    bookies: Io
    moto: Io
    s3: dict[str, int]

    @staticmethod
    def now(cluster: DevCluster) -> Counters:
        assert cluster.moto is not None
        return Counters(proc_io(list(cluster.bookies)), proc_io([cluster.moto]), s3_requests(cluster))

    def since(self, before: Counters) -> Counters:
        return Counters(
            self.bookies - before.bookies, self.moto - before.moto,
            {k: v - before.s3.get(k, 0) for k, v in self.s3.items() if v != before.s3.get(k, 0)},
        )  # fmt: skip


def fill(bootstrap: str, topic: str, total_bytes: int) -> int:
    """Produce ``total_bytes`` of VALUE_BYTES values to partition 0 as fast as possible; the record count."""
    from confluent_kafka import Producer

    errors: list[str] = []
    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20, "batch.size": 1_000_000,
        "queue.buffering.max.kbytes": 256 * 1024, "message.timeout.ms": 300_000,
    })  # fmt: skip
    value = bytes(range(256)) * (VALUE_BYTES // 256) + b"x" * (VALUE_BYTES % 256)
    n = total_bytes // VALUE_BYTES

    def report(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for _ in range(n):
        while True:
            try:
                producer.produce(topic, value=value, partition=0, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(600) == 0
    assert not errors, errors[:3]
    return n


def offload_figures(admin: str, topic: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://{admin}/v1/offload?topic={topic}", timeout=10) as r:
        parts = json.load(r)["partitions"]
    return parts[0] if parts else {}


def wait_offloaded(cluster: DevCluster, topic: str, owner: int, timeout: float = 600.0) -> dict[str, object]:
    """Until the owner has offloaded every closed ledger of topic/0 (only the open one is left on bookies)."""
    deadline = time.monotonic() + timeout
    figures: dict[str, object] = {}
    while time.monotonic() < deadline:
        figures = offload_figures(cluster.broker(owner).admin, topic)
        if figures and figures["ledgers_waiting"] == 0 and int(figures["ledgers"]) <= 1:  # type: ignore[call-overload]
            return figures
        time.sleep(0.5)
    raise AssertionError(f"{topic}: not offloaded in {timeout}s: {figures}")


def move_and_count(cluster: DevCluster, size: int, label: str) -> None:
    topic = f"zc-{label}"
    create_topic(cluster.bootstrap, topic, partitions=1)
    started = time.monotonic()
    records = fill(cluster.bootstrap, topic, size)
    produced_s = time.monotonic() - started
    owner = leader(cluster.bootstrap, topic, 0)[0]
    figures = wait_offloaded(cluster, topic, owner)
    target = 1 if owner == 2 else 2

    idle_before = Counters.now(cluster)
    time.sleep(SETTLE_S + 0.1)
    idle = Counters.now(cluster).since(idle_before)

    before = Counters.now(cluster)
    seconds, epoch = move(cluster.bootstrap, topic, 0, target)
    moved = Counters.now(cluster)
    time.sleep(SETTLE_S)
    during = moved.since(before)
    settle = Counters.now(cluster).since(moved)
    after = offload_figures(cluster.broker(target).admin, topic)

    print(
        f"\n{label}: {records} records, {records * VALUE_BYTES / MB:.0f} MiB produced in {produced_s:.1f} s; "
        f"before the move: {figures['segments']} segments ({int(figures['offloaded_bytes']) / MB:.0f} MiB) "  # type: ignore[call-overload]
        f"in the object store, {figures['ledgers']} open ledger on bookies"
    )
    print(f"{label}: move {owner} -> {target} took {seconds * 1000:.0f} ms (epoch {epoch}); new owner reports "
          f"{after.get('segments')} segments, high watermark {after.get('high_watermark')}")  # fmt: skip
    for what, c in (
        ("the move (request -> new leader in Metadata)", during),
        (f"the {SETTLE_S:.0f} s after it", settle),
        (f"an idle {SETTLE_S:.0f} s before it", idle),
    ):
        print(f"{label}: {what}: bookies {c.bookies.text()}")
        print(f"{label}: {what}: object store (moto) {c.moto.text()}; requests {c.s3}")

    # far below the partition's size: nothing was copied (the bound leaves room for the tail ledger, which
    # the new owner offloads once the move has closed it)
    copied = [max(c.bookies.rchar, c.bookies.wchar, c.moto.rchar, c.moto.wchar) for c in (during, settle)]
    assert max(copied) < max(size // 20, 2 * ROLLOVER_BYTES), (during, settle)
    # the partition still reads through the new owner: its last records and its first (from the object store)
    end = high_watermark(cluster.bootstrap, topic, 0)
    assert end == records
    assert len(read_partition(cluster.bootstrap, topic, 0, 3)) >= 3


def test_move_of_a_10_mb_partition_copies_nothing(cluster: DevCluster) -> None:
    move_and_count(cluster, 10 * MB, "10MB")


@pytest.mark.slow
def test_move_of_a_1_gb_partition_copies_nothing(cluster: DevCluster) -> None:
    move_and_count(cluster, 1024 * MB, "1GB")


@pytest.mark.slow
def test_move_of_a_5_gb_partition_copies_nothing(cluster: DevCluster) -> None:
    move_and_count(cluster, 5 * 1024 * MB, "5GB")
