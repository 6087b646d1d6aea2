"""ListOffsets (2): earliest, latest, max timestamp, and the first offset at or after a timestamp — across the
bookie and object-store tiers (KIP-1005's earliest-local and latest-tiered name the boundary between them)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.codec.batch import iter_headers
from brokers.codec.records import record_timestamps
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.log.partition import LogError, PartitionLog

API_KEY = 2
MIN_VERSION = 1
MAX_VERSION = 10
LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL = -4
LATEST_TIERED = -5


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    mod = response_module(API_KEY, ctx.api_version)
    topics = []
    for t in request.topics:
        topic = broker.topics.get(t.name)
        parts = []
        for p in t.partitions:
            code, ts, offset, epoch = ErrorCode.none, -1, -1, -1
            if topic is None or not 0 <= p.partition_index < topic.partitions:
                code = ErrorCode.unknown_topic_or_partition
            else:
                try:
                    plog = await broker.logs.get(topic.topic_id, p.partition_index)
                    ts, offset = await lookup(plog, p.timestamp)
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


async def lookup(plog: PartitionLog, timestamp: int) -> tuple[int, int]:
    """(timestamp, offset) for a ListOffsets query; (-1, -1) when no record qualifies."""
    if timestamp == LATEST:
        return -1, plog.high_watermark
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
        for head in iter_headers(batches):
            for offset, ts in record_timestamps(batches, head):
                if ts > best[0] and offset >= plog.log_start_offset:
                    best = (ts, offset)
        return best
    if timestamp < 0:
        raise LogError(ErrorCode.invalid_request, f"unknown special timestamp {timestamp}")
    batches = await plog.find_by_timestamp(timestamp)
    if batches is None:
        return -1, -1
    for head in iter_headers(batches):
        if head.max_timestamp < timestamp:
            continue
        for offset, ts in record_timestamps(batches, head):
            if ts >= timestamp and offset >= plog.log_start_offset:
                return ts, offset
    return -1, -1
