"""Produce (0): validate batches (magic, framing, CRC-32C, size), append, answer once quorum-durable.

acks=1 and acks=all both mean durable on an ack quorum of bookies; acks=0 gets no response.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.codec.batch import BatchError, UnsupportedMagic, validate
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.log.partition import AppendResult, LogError
from brokers.topics import INTERNAL_TOPICS

API_KEY = 0
MIN_VERSION = 3
MAX_VERSION = 12
ADVERTISED_MIN_VERSION = 0  # v0-2 are refused (message formats v0/v1), but librdkafka needs to see v0


class _Outcome:
    __slots__ = ("error", "message", "pending", "result")

    def __init__(self) -> None:
        self.error = ErrorCode.none
        self.message: str | None = None
        self.pending: asyncio.Future[AppendResult] | None = None
        self.result: AppendResult | None = None

    def fail(self, code: ErrorCode, message: str) -> None:
        self.error, self.message = code, message


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    outcomes: list[tuple[str, list[tuple[int, _Outcome]]]] = []
    await ctx.in_order()
    try:
        for topic_data in request.topic_data:
            name = topic_data.name
            parts: list[tuple[int, _Outcome]] = []
            outcomes.append((name, parts))
            topic = broker.topics.get(name)
            max_message = int(
                (topic.configs.get("max.message.bytes") if topic else None) or broker.config.message_max_bytes
            )
            for pdata in topic_data.partition_data:
                out = _Outcome()
                parts.append((pdata.index, out))
                if topic is None or not 0 <= pdata.index < topic.partitions:
                    out.fail(ErrorCode.unknown_topic_or_partition, f"{name}/{pdata.index} does not exist")
                    continue
                if name in INTERNAL_TOPICS:
                    out.fail(ErrorCode.invalid_topic_exception, f"cannot append to internal topic {name}")
                    continue
                records = pdata.records
                if not records:
                    out.fail(ErrorCode.corrupt_message, "no records")
                    continue
                try:
                    headers = validate(records)
                except UnsupportedMagic as e:
                    out.fail(ErrorCode.unsupported_for_message_format, str(e))
                    continue
                except BatchError as e:
                    out.fail(ErrorCode.corrupt_message, str(e))
                    continue
                too_big = next((h for h in headers if h.size > max_message), None)
                if too_big is not None:
                    out.fail(
                        ErrorCode.message_too_large,
                        f"batch of {too_big.size} bytes exceeds max.message.bytes={max_message}",
                    )
                    continue
                try:
                    plog = await broker.logs.get(topic.topic_id, pdata.index)
                    out.pending = await plog.append(records, headers)
                except LogError as e:
                    out.fail(e.code, str(e))
    finally:
        ctx.appended()
    for _name, parts in outcomes:
        for _index, out in parts:
            if out.pending is not None:
                try:
                    out.result = await out.pending
                except LogError as e:
                    out.fail(e.code, str(e))
    if request.acks == 0:
        return None
    return _response(ctx, outcomes)


def _response(ctx: RequestContext, outcomes: list[tuple[str, list[tuple[int, _Outcome]]]]) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    topics = []
    for name, parts in outcomes:
        responses = []
        for index, out in parts:
            result = out.result
            responses.append(
                make(
                    mod.PartitionProduceResponse,
                    index=index,
                    error_code=out.error,
                    base_offset=result.base_offset if result else -1,
                    log_append_time=None,
                    log_start_offset=result.log_start_offset if result else -1,
                    record_errors=(),
                    error_message=out.message,
                )
            )
        topics.append(make(mod.TopicProduceResponse, name=name, partition_responses=tuple(responses)))
    return make(mod.ProduceResponse, responses=tuple(topics), throttle_time=NO_THROTTLE)
