"""Producing and fetching records over the Kafka protocol, for ``tidelog produce`` and ``tidelog consume``.

A quick-look client (kcat's job), not a production one: uncompressed v2 batches (brokers/codec/builder.py),
no idempotence, Fetch by topic name (v4-v12) and Produce v3-v12, each request to the partition's leader from
Metadata, refreshed and retried while leadership moves (bounded by the client timeout). Keyed records go to
``murmur2(key) % partitions`` as the Java client places them, so a key lands where other clients put it.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from brokers.cli.client import KafkaClient, KafkaError, error_name
from brokers.codec.batch import HEADER_SIZE, read_header
from brokers.codec.builder import build_batches, iter_records
from brokers.handlers.base import make

PRODUCE, FETCH = 0, 1
RETRIABLE = frozenset(
    {
        ErrorCode.not_leader_or_follower, ErrorCode.leader_not_available, ErrorCode.unknown_topic_or_partition,
        ErrorCode.fenced_leader_epoch, ErrorCode.request_timed_out, ErrorCode.not_enough_replicas,
        ErrorCode.not_enough_replicas_after_append, ErrorCode.kafka_storage_error, ErrorCode.network_exception,
        ErrorCode.offset_not_available,
    }
)
BATCH_BYTES = 1 << 20
KV = tuple[bytes | None, bytes | None]


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One partition's answer to a fetch: its records from the asked offset, where to fetch next, the end."""

    records: tuple[Record, ...]
    next_offset: int
    high_watermark: int
    log_start: int
    error: ErrorCode


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as a signed 32-bit int."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    i = 0
    while length - i >= 4:
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
        i += 4
    rest = length - i
    if rest == 3:
        h ^= data[i + 2] << 16
    if rest >= 2:
        h ^= data[i + 1] << 8
    if rest >= 1:
        h ^= data[i]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partition for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def _retry_pause(deadline: float, delay: float, what: str, code: ErrorCode) -> float:
    if time.monotonic() + delay > deadline:
        raise KafkaError(code, f"{what}: still {error_name(code)} when the timeout ran out")
    await asyncio.sleep(delay)
    return min(delay * 2, 1.0)


async def leaders(client: KafkaClient, topic: str, auto_create: bool = False) -> dict[int, int]:
    """partition -> leader id; raises KafkaError if the topic does not exist. With ``auto_create`` (produce,
    as a producer's Metadata asks) a cluster that creates topics on first use does so, and the answer is
    awaited while the new topic has no leader yet (bounded by the client timeout)."""
    deadline = time.monotonic() + client.timeout
    delay = 0.05
    while True:
        resp = await client.metadata([topic], auto_create=auto_create)
        code = ErrorCode.unknown_topic_or_partition
        for t in resp.topics:
            if t.name == topic:
                code = t.error_code
                if code == ErrorCode.none:
                    return {int(p.partition_index): int(p.leader_id) for p in t.partitions}
        if not auto_create or code != ErrorCode.leader_not_available:  # UNKNOWN: the cluster does not auto-create
            break
        if time.monotonic() + delay > deadline:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    if code == ErrorCode.unknown_topic_or_partition:
        raise KafkaError(code, f"topic {topic!r} does not exist")
    raise KafkaError(code, f"topic {topic!r}: {error_name(code)}")


class Producer:
    """Sends batches to one topic's partition leaders; the leader map is refreshed when an answer says it moved.

    Requests may be pipelined (several ``send`` at once): each connection matches answers by correlation id.
    """

    def __init__(self, client: KafkaClient, topic: str, acks: int = -1) -> None:
        self.client = client
        self.topic = topic
        self.acks = acks
        self.leaders: dict[int, int] = {}

    async def refresh(self) -> dict[int, int]:
        self.leaders = await leaders(self.client, self.topic, auto_create=True)
        return self.leaders

    async def send(self, partition: int, batch: bytes) -> int:
        """Append one batch to ``partition``; returns its base offset. Retries while leadership moves."""
        deadline = time.monotonic() + self.client.timeout
        delay = 0.05
        where = f"produce to {self.topic}:{partition}"
        while True:
            if not self.leaders:
                await self.refresh()
            if partition not in self.leaders:
                raise KafkaError(
                    ErrorCode.unknown_topic_or_partition,
                    f"topic {self.topic!r} has no partition {partition} (it has {len(self.leaders)})",
                )
            leader = self.leaders[partition]
            if leader < 0:
                delay = await _retry_pause(deadline, delay, where, ErrorCode.leader_not_available)
                await self.refresh()
                continue
            conn = await self.client.node(leader)
            mod = conn.module(PRODUCE, 3, 12)
            resp = await conn.send(
                make(
                    mod.ProduceRequest, transactional_id=None, acks=self.acks,
                    timeout=datetime.timedelta(seconds=self.client.timeout),
                    topic_data=(make(mod.TopicProduceData, name=self.topic, partition_data=(
                        make(mod.PartitionProduceData, index=partition, records=batch),
                    )),),
                )
            )
            p = resp.responses[0].partition_responses[0]
            if p.error_code == ErrorCode.none:
                return int(p.base_offset)
            if p.error_code not in RETRIABLE:
                detail = f": {p.error_message}" if getattr(p, "error_message", None) else ""
                raise KafkaError(p.error_code, f"{where}: {error_name(p.error_code)}{detail}")
            delay = await _retry_pause(deadline, delay, where, p.error_code)
            await self.refresh()


def batches_of(records: Sequence[KV], max_bytes: int = BATCH_BYTES) -> list[bytes]:
    """Uncompressed v2 batches of about ``max_bytes`` for ``records``, stamped now."""
    return build_batches(records, int(time.time() * 1000), max_bytes)


def decode_records(topic: str, partition: int, data: bytes, from_offset: int) -> tuple[list[Record], int]:
    """The records at or after ``from_offset`` in a Fetch answer's records, and the offset after the last
    complete batch (a batch cut off at the end of the answer is left for the next fetch). Control batches
    (transaction markers) are skipped but move the offset on."""
    out: list[Record] = []
    pos, end = 0, len(data)
    next_offset = from_offset
    while end - pos >= HEADER_SIZE:
        head = read_header(data, pos)
        if pos + head.size > end:
            break
        if not head.is_control:
            out.extend(
                Record(topic, partition, kv.offset, kv.timestamp, kv.key, kv.value)
                for kv in iter_records(data, head)
                if kv.offset >= from_offset
            )
        next_offset = max(next_offset, head.last_offset + 1)
        pos += head.size
    return out, next_offset


async def fetch(
    client: KafkaClient, topic: str, offsets: Mapping[int, int], *, max_wait_ms: int = 500,
    partition_max_bytes: int = 1 << 20,
) -> dict[int, FetchResult]:
    """One Fetch per leader for ``offsets`` (partition -> next offset); partitions whose leader is unknown are
    left out of the answer (the caller asks again)."""
    lead = await leaders(client, topic)
    by_leader: dict[int, list[int]] = {}
    for p in offsets:
        if lead.get(p, -1) >= 0:
            by_leader.setdefault(lead[p], []).append(p)
    results: dict[int, FetchResult] = {}

    async def one(leader: int, parts: list[int]) -> None:
        conn = await client.node(leader)
        mod = conn.module(FETCH, 4, 12)
        resp = await conn.send(
            make(
                mod.FetchRequest, cluster_id=None, replica_id=-1, max_wait=datetime.timedelta(milliseconds=max_wait_ms),
                min_bytes=1, max_bytes=partition_max_bytes * len(parts), isolation_level=0, session_id=0,
                session_epoch=-1, forgotten_topics_data=(), rack_id="",
                topics=(make(mod.FetchTopic, topic=topic, partitions=tuple(
                    make(mod.FetchPartition, partition=p, current_leader_epoch=-1, fetch_offset=offsets[p],
                         last_fetched_epoch=-1, log_start_offset=-1, partition_max_bytes=partition_max_bytes)
                    for p in parts
                )),),
            ),
            request_timeout=client.timeout + max_wait_ms / 1000,
        )
        if resp.error_code != ErrorCode.none:
            raise KafkaError(resp.error_code, f"fetch from {conn.address}: {error_name(resp.error_code)}")
        for t in resp.responses:
            for pd in t.partitions:
                p = int(pd.partition_index)
                start = offsets.get(p, 0)
                records, nxt = decode_records(topic, p, bytes(pd.records or b""), start)
                results[p] = FetchResult(
                    tuple(records), nxt, int(pd.high_watermark), int(getattr(pd, "log_start_offset", -1)),
                    pd.error_code,
                )

    await asyncio.gather(*(one(leader, parts) for leader, parts in by_leader.items()))
    return results


def as_text(value: bytes | None) -> str:
    """Bytes for a terminal: UTF-8 where it decodes, else with escapes; null is the empty string."""
    if value is None:
        return ""
    return value.decode("utf-8", errors="backslashreplace")
