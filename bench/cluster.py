"""Cluster benchmark: produce/consume MB/s with 1, 2 and 3 brokers over 3 bookies, and the move pause a producer
sees against the size of the partition moved.

For each broker count a fresh ``DevCluster`` (brokers/devcluster.py: etcd, moto S3, 3 bookies, N ``tidelog
broker`` processes) is started on 127.0.0.1; a topic with --partitions partitions spreads over the brokers; one
confluent-kafka producer (1 KiB records, acks=all, idempotent, linger 5 ms, 1 MB batches) produces as fast as it
can for --duration seconds; one consumer then reads everything from offset 0. Printed: MB/s (10^6 bytes) both
ways and the CPU share over the produce phase of each broker and bookie (from /proc) and of this process (the
client), which answers whether a second broker process (on the second core) adds throughput - or whether the
client or the machine is the limit.

Move pause: on a 2-broker cluster, for each --sizes value a one-partition topic is filled to that size (100 KB
records; ``ledger.rollover.bytes`` 8 MiB; the moves start once every closed ledger is offloaded), then moved
back and forth --moves times while a steady idempotent producer (~200 records/s) writes to it; the pause per move
is the longest gap between consecutive delivery reports around the move (tests/cluster/moving.py), reported as
p50/p99/max, with the time from the move request until Metadata shows the new leader.

    .venv/bin/python bench/cluster.py                       # the figures in docs/benchmarks.md
    .venv/bin/python bench/cluster.py --duration 5 --brokers 1,2 --sizes 10 --moves 5   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from brokers.devcluster import DevCluster, Proc  # noqa: E402
from tests.cluster.moving import leader, move, pauses, summary  # noqa: E402
from tests.cluster.test_move_under_load import SteadyProducer  # noqa: E402
from tests.cluster.test_zero_copy_move import fill, wait_offloaded  # noqa: E402
from tests.e2e.helpers import create_topic  # noqa: E402

MB = 1_000_000
RECORD = 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(p: Proc) -> float:
    fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def produce_full(bootstrap: str, topic: str, duration: float, record: int) -> tuple[int, float]:
    """As fast as possible for ``duration`` s; (bytes acknowledged, seconds until the last ack)."""
    acked = [0]
    errors: list[str] = []

    def report(err: object, msg: object) -> None:
        if err is None:
            acked[0] += record
        else:
            errors.append(str(err))

    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
        "batch.size": 1_000_000, "queue.buffering.max.kbytes": 262_144, "message.timeout.ms": 120_000,
    })  # fmt: skip
    value = os.urandom(record)
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < duration:
        try:
            producer.produce(topic, value=value, key=str(i % 1000).encode(), on_delivery=report)
            i += 1
        except BufferError:
            producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    if errors:
        print(f"  {len(errors)} delivery errors, first: {errors[0]}")
    return acked[0], time.monotonic() - started


def consume_all(bootstrap: str, topic: str, partitions: int, expected_bytes: int) -> tuple[int, float]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-{time.monotonic_ns()}", "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 10_485_760,
    })  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = 0
    started = time.monotonic()
    deadline = started + 300
    try:
        while got < expected_bytes and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error() is None:
                    got += len(msg.value() or b"")
    finally:
        consumer.close()
    return got, time.monotonic() - started


def throughput(brokers: int, partitions: int, duration: float, record: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tidelog-bench-cluster-") as d, DevCluster(d, brokers=brokers) as c:
        topic = "bench"
        create_topic(c.bootstrap, topic, partitions=partitions)
        procs = [*c.brokers, *c.bookies]
        cpu0 = {p.name: cpu_seconds(p) for p in procs}
        own0 = os.times()
        produced, secs = produce_full(c.bootstrap, topic, duration, record)
        own1 = os.times()
        cpu = {p.name: (cpu_seconds(p) - cpu0[p.name]) / secs for p in procs}
        cpu["client (this process)"] = (own1.user + own1.system - own0.user - own0.system) / secs
        consumed, csecs = consume_all(c.bootstrap, topic, partitions, produced)
        shares = ", ".join(f"{name} {share:.0%}" for name, share in cpu.items())
        print(
            f"{brokers} broker(s), {partitions} partitions, {record} B records: "
            f"produce {produced / MB / secs:.1f} MB/s "
            f"({produced / MB:.0f} MB in {secs:.1f} s); consume {consumed / MB / csecs:.1f} MB/s; CPU: {shares}; "
            f"load {Path('/proc/loadavg').read_text().split()[:3]}",
            flush=True,
        )


def move_pauses(sizes_mb: list[int], moves: int) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="tidelog-bench-moves-") as d,
        DevCluster(d, brokers=2, broker_args=["--config", "ledger.rollover.bytes=8388608"]) as c,
    ):
        for size in sizes_mb:
            topic = f"size-{size}"
            create_topic(c.bootstrap, topic, partitions=1)
            fill(c.bootstrap, topic, size * MB)
            wait_offloaded(c, topic, leader(c.bootstrap, topic, 0)[0])  # moves measured, not the offloader
            producer = SteadyProducer(c.bootstrap, topic, 0)
            producer.start()
            producer.wait_acks(50)
            owner = leader(c.bootstrap, topic, 0)[0]
            other = 1 if owner == 2 else 2
            windows, took = [], []
            for _ in range(moves):
                started = time.monotonic()
                took.append(move(c.bootstrap, topic, 0, other)[0])
                producer.wait_acks(len(producer.acks) + 20)
                windows.append((started, time.monotonic()))
                owner, other = other, owner
            producer.stop()
            gaps = pauses([t for t, _, _ in producer.acks], windows)
            print(
                f"{size} MB partition, {moves} moves: "
                + summary(gaps).line("client-visible pause")
                + "; "
                + summary(took).line("request -> new leader in Metadata")
                + f"; errors {len(producer.errors)}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default="1,2,3", help="broker counts to measure (default 1,2,3)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--record-bytes", type=int, default=RECORD, help="record size (default 1024)")
    ap.add_argument("--duration", type=float, default=20.0, help="produce phase, seconds (default 20)")
    ap.add_argument(
        "--sizes", default="10,100,1000", help="partition sizes for the move pause, MB (default 10,100,1000)"
    )
    ap.add_argument("--moves", type=int, default=20, help="moves per size (default 20)")
    args = ap.parse_args()
    print(machine())
    for n in (int(x) for x in args.brokers.split(",") if x):
        throughput(n, args.partitions, args.duration, args.record_bytes)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if sizes:
        move_pauses(sizes, args.moves)


if __name__ == "__main__":
    main()
