"""Helpers of the move tests and bench/cluster.py: move a partition and wait for it, measure the pause a
producer sees, read a partition back with its offsets, and check a history of acknowledgements against it.

* ``move(bootstrap, topic, p, to)`` asks for a move with AlterPartitionReassignments (as ``tidelog partitions
  move`` does, in-process so a hundred moves cost no interpreter starts) and returns once Metadata from the
  bootstrap shows the target as leader: (seconds, epoch).
* ``pauses(ack_times, windows)``: for each move window (request time, end time), the longest gap between
  consecutive acknowledgements that spans part of it - "last ack before -> first ack after".
* ``check_history(acked, read)``: acknowledged (offset, value) pairs against the partition as read at the end.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from brokers.cli.client import KafkaClient

POLL_S = 0.01
MOVE_TIMEOUT_S = 60.0


async def _leader(client: KafkaClient, topic: str, partition: int) -> tuple[int, int]:
    resp = await client.metadata([topic])
    for t in resp.topics:
        if t.name == topic and t.error_code == ErrorCode.none:
            for p in t.partitions:
                if int(p.partition_index) == partition:
                    return int(p.leader_id), int(p.leader_epoch)
    return -1, -1


def leader(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    """(leader id, leader epoch) of one partition as Metadata from ``bootstrap`` shows it ((-1, -1): none)."""

    async def run() -> tuple[int, int]:
        async with KafkaClient(bootstrap, timeout=10) as client:
            return await _leader(client, topic, partition)

    return asyncio.run(run())


def move(bootstrap: str, topic: str, partition: int, to: int, timeout: float = MOVE_TIMEOUT_S) -> tuple[float, int]:
    """Request a move of topic:partition to broker ``to``; wait until Metadata shows it there.

    Returns (seconds from the request to Metadata showing the new leader, the new leader epoch).
    """

    async def run() -> tuple[float, int]:
        async with KafkaClient(bootstrap, timeout=10) as client:
            started = time.monotonic()
            answer = (await client.alter_partition_reassignments({(topic, partition): to})).get((topic, partition))
            if answer is not None:
                raise AssertionError(f"move {topic}:{partition} to {to}: {answer}")
            deadline = started + timeout
            while time.monotonic() < deadline:
                try:
                    now, epoch = await _leader(client, topic, partition)
                except Exception:
                    await client.close()
                    now, epoch = -1, -1
                if now == to:
                    return time.monotonic() - started, epoch
                await asyncio.sleep(POLL_S)
            raise AssertionError(f"{topic}:{partition} not on broker {to} after {timeout}s")

    return asyncio.run(run())


def pauses(ack_times: Sequence[float], windows: Iterable[tuple[float, float]]) -> list[float]:
    """For each (start, end) window, the longest gap between consecutive ack times from the last ack before
    ``start`` to the first ack after ``end`` (``ack_times`` sorted)."""
    out = []
    for start, end in windows:
        lo = max(bisect.bisect_right(ack_times, start) - 1, 0)
        hi = min(bisect.bisect_left(ack_times, end) + 1, len(ack_times) - 1)
        gaps = [ack_times[i + 1] - ack_times[i] for i in range(lo, hi)]
        out.append(max(gaps, default=0.0))
    return out


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p99: float
    max: float

    def line(self, what: str, unit: str = "ms", scale: float = 1000.0) -> str:
        return (
            f"{what}: n={self.n} p50={self.p50 * scale:.0f} {unit} p99={self.p99 * scale:.0f} {unit} "
            f"max={self.max * scale:.0f} {unit}"
        )


def summary(values: Sequence[float]) -> Summary:
    """p50/p99/max (p99 by nearest rank: with fewer than 100 values it is the maximum)."""
    s = sorted(values)
    if not s:
        return Summary(0, 0.0, 0.0, 0.0)
    rank = max(int(len(s) * 0.99 + 0.999999) - 1, 0)
    return Summary(len(s), statistics.median(s), s[min(rank, len(s) - 1)], s[-1])


def check_history(acked: Iterable[tuple[int, bytes]], read: Sequence[tuple[int, bytes]]) -> list[str]:
    """Problems of a history: ``acked`` = (offset, value) the producer was told, ``read`` = (offset, value) of
    the whole partition as read at the end. Offsets read must be contiguous from the first, no value may
    appear twice, and every acknowledged value must be at its acknowledged offset. An empty list: all good."""
    problems = []
    offsets = [o for o, _ in read]
    if offsets and offsets != list(range(offsets[0], offsets[0] + len(offsets))):
        gaps = [(a, b) for a, b in itertools.pairwise(offsets) if b != a + 1]
        problems.append(f"offsets not contiguous: {gaps[:5]}")
    at = dict(read)
    seen: dict[bytes, int] = {}
    for o, v in read:
        if v in seen:
            problems.append(f"value {v!r} at offsets {seen[v]} and {o}")
        seen[v] = o
    for o, v in acked:
        if o not in at:
            problems.append(f"acknowledged {v!r} at offset {o}: offset not in the log")
        elif at[o] != v:
            problems.append(f"acknowledged {v!r} at offset {o}: the log has {at[o]!r} there")
    return problems


def read_partition(
    bootstrap: str, topic: str, partition: int, end: int, timeout: float = 120.0
) -> list[tuple[int, bytes]]:
    """(offset, value) of topic:partition from offset 0 up to ``end`` (exclusive), with confluent-kafka."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"read-{time.monotonic_ns()}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "fetch.max.bytes": 16 << 20,
    })  # fmt: skip
    out: list[tuple[int, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + timeout
        while (not out or out[-1][0] < end - 1) and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error() is None:
                    out.append((msg.offset(), msg.value() or b""))
    finally:
        consumer.close()
    return out


def high_watermark(bootstrap: str, topic: str, partition: int, timeout: float = 60.0) -> int:
    """The partition's high watermark (asked again, by a new client, while the partition is between owners)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    deadline = time.monotonic() + timeout
    while True:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "hw"})
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            consumer.close()
