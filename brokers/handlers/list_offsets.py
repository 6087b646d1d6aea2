"""ListOffsets (2): earliest, latest, max timestamp, and the first offset at or after a timestamp — across the
bookie and object-store tiers (KIP-1005's earliest-local and latest-tiered name the boundary between them).

Work is proportional to the batches of the one entry found, never to the offsets a batch spans: a
LogAppendTime batch gives every record its max timestamp, so its answer comes from the header alone. A batch
whose records cannot be read (stored before producer batches were validated) is answered from its header.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.codec.batch import HEADER_SIZE, TIMESTAMP_TYPE_FLAG, BatchError, BatchHeader, iter_headers
from brokers.codec.records import record_timestamps
from brokers.codec.validate import MAX_DECOMPRESSED_BYTES
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.leadership import epoch_error
from brokers.log.partition import LogError, PartitionLog
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 2
MIN_VERSION = 1
MAX_VERSION = 10
LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL = -4
LATEST_TIERED = -5
READ_COMMITTED = 1


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    mod = response_module(API_KEY, ctx.api_version)
    topics = []
    committed = getattr(request, "isolation_level", 0) == READ_COMMITTED
    for t in request.topics:
        topic = broker.topics.get(t.name)
        denied = not ctx.allowed(AclOperation.DESCRIBE, ResourceType.TOPIC, t.name)
        parts = []
        for p in t.partitions:
            code, ts, offset, epoch = ErrorCode.none, -1, -1, -1
            if denied:
                code = ErrorCode.topic_authorization_failed
            elif topic is None or not 0 <= p.partition_index < topic.partitions:
                code = ErrorCode.unknown_topic_or_partition
            else:
                try:
                    plog = await broker.serving_log(topic.topic_id, p.partition_index)
                    code = epoch_error(getattr(p, "current_leader_epoch", -1), plog.epoch)
                    if code == ErrorCode.none:
                        ts, offset = await lookup(plog, p.timestamp, committed=committed)
                        epoch = plog.epoch
                except LogError as e:
                    code = e.code
            parts.append(
                make(
                    mod.ListOffsetsPartitionResponse,
                    partition_index=p.partition_index,
                    error_code=code,
                    timestamp=ts,
                    offset=offset,
                    leader_epoch=epoch,
                )
            )
        topics.append(make(mod.ListOffsetsTopicResponse, name=t.name, partitions=tuple(parts)))
    return make(mod.ListOffsetsResponse, throttle_time=NO_THROTTLE, topics=tuple(topics))


async def lookup(plog: PartitionLog, timestamp: int, *, committed: bool = False) -> tuple[int, int]:
    """(timestamp, offset) for a ListOffsets query; (-1, -1) when no record qualifies. ``committed``
    (read_committed): LATEST is the last stable offset, and a timestamp lookup finds no record at or above it."""
    if timestamp == LATEST:
        return -1, plog.last_stable_offset if committed else plog.high_watermark
    if committed and timestamp >= 0:
        hit = await lookup(plog, timestamp)
        return hit if hit[1] < plog.last_stable_offset else (-1, -1)
    if timestamp == EARLIEST:
        return -1, plog.log_start_offset
    if timestamp == EARLIEST_LOCAL:
        return -1, plog.local_start_offset
    if timestamp == LATEST_TIERED:
        return -1, plog.tiered_end_offset - 1
    if timestamp == MAX_TIMESTAMP:
        batches = await plog.max_timestamp_entry()
        if batches is None:
            return -1, -1
        best = (-1, -1)
        start = plog.log_start_offset
        for head in iter_headers(batches):
            if head.max_timestamp <= best[0] or head.last_offset < start:
                continue
            times = _record_times(batches, head)
            if times is None:
                best = (head.max_timestamp, max(head.base_offset, start))
                continue
            for offset, ts in times:
                if ts > best[0] and offset >= start:
                    best = (ts, offset)
        return best
    if timestamp < 0:
        raise LogError(ErrorCode.invalid_request, f"unknown special timestamp {timestamp}")
    batches = await plog.find_by_timestamp(timestamp)
    if batches is None:
        return -1, -1
    for head in iter_headers(batches):
        found = _first_at_or_after(batches, head, timestamp, plog.log_start_offset)
        if found is not None:
            return found
    return -1, -1


MIN_RECORD_BYTES = 7  # length, attributes, timestamp and offset deltas, key, value and header counts


def _record_times(batches: memoryview, head: BatchHeader) -> list[tuple[int, int]] | None:
    """(offset, timestamp) of the batch's records, or None where its header must answer: a LogAppendTime
    batch (every record carries the batch's max timestamp) or records that cannot be read."""
    if head.attributes & TIMESTAMP_TYPE_FLAG:
        return None
    room = MAX_DECOMPRESSED_BYTES if head.compression else head.size - HEADER_SIZE
    if head.records_count * MIN_RECORD_BYTES > room:
        return None  # a header claiming more records than fit: do not walk it
    try:
        return record_timestamps(batches, head)
    except BatchError:
        return None


def _first_at_or_after(batches: memoryview, head: BatchHeader, timestamp: int, start: int) -> tuple[int, int] | None:
    """(timestamp, offset) of the batch's first record at or after ``start`` stamped >= ``timestamp``."""
    if head.max_timestamp < timestamp or head.last_offset < start:
        return None
    times = _record_times(batches, head)
    if times is None:
        return head.max_timestamp, max(head.base_offset, start)
    for offset, ts in times:
        if ts >= timestamp and offset >= start:
            return ts, offset
    return None
