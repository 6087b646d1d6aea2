"""Fetch (1): batches from the tail cache or ledgers; long-poll woken by high-watermark events.

Size limits as Kafka keeps them (KIP-74): whole batches, each partition within its ``partition_max_bytes``
and the response within ``max_bytes`` (and the broker's ``fetch.max.bytes``), except that the first batch of
the first partition returning data is sent whole, so a batch larger than the limits never stalls a consumer.

The bytes read come out of the broker-wide fetch response budget (brokers/response_memory.py): a fetch reads
no more than it was granted (its first batch when the budget is spent) and holds what it read until the
server has written the response.

``isolation_level=read_committed`` (KIP-98): only batches below the partition's last stable offset, with the
aborted transactions overlapping what is returned (from the ledger tail's index and the segments' indexes), so
the consumer drops their records; every answer reports the last stable offset.

Sessions (KIP-227) are not kept: every answer carries session id 0, which tells clients to send
full fetch requests. v13+ name topics by id.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from brokers import response_memory
from brokers.codec.batch import iter_headers
from brokers.codec.chain import Chunks
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.leadership import HINTED, Hints, current_leader, epoch_error
from brokers.log.partition import LogError, PartitionLog
from brokers.observability import traffic
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 1
MIN_VERSION = 4
MAX_VERSION = 16


READ_COMMITTED = 1


class _Part:
    __slots__ = ("aborted", "error", "hw", "index", "log", "lso", "max_bytes", "offset", "records", "start", "topic_id")

    def __init__(self, index: int, offset: int, max_bytes: int) -> None:
        self.index = index
        self.offset = offset
        self.max_bytes = max_bytes
        self.log: PartitionLog | None = None
        self.error = ErrorCode.none
        self.records: list[memoryview] = []
        self.hw = -1
        self.start = -1
        self.lso = -1
        self.aborted: list[tuple[int, int]] = []
        self.topic_id = ""


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    by_id = ctx.api_version >= 13
    plan: list[tuple[Any, list[_Part]]] = []
    for ft in request.topics:
        topic = broker.topics.by_id(str(ft.topic_id)) if by_id else broker.topics.get(ft.topic)
        parts = [_Part(p.partition, p.fetch_offset, p.partition_max_bytes) for p in ft.partitions]
        plan.append((ft.topic_id if by_id else ft.topic, parts))
        name = topic.name if topic is not None else None if by_id else ft.topic
        denied = name is not None and not ctx.allowed(AclOperation.READ, ResourceType.TOPIC, name)
        for part, wanted in zip(parts, ft.partitions, strict=True):
            if denied:
                part.error = ErrorCode.topic_authorization_failed
            elif topic is None:
                part.error = ErrorCode.unknown_topic_id if by_id else ErrorCode.unknown_topic_or_partition
            elif not 0 <= part.index < topic.partitions:
                part.error = ErrorCode.unknown_topic_or_partition
            else:
                part.topic_id = topic.topic_id
                try:
                    plog = await broker.serving_log(topic.topic_id, part.index)
                except LogError as e:
                    part.error = e.code
                    continue
                part.error = epoch_error(getattr(wanted, "current_leader_epoch", -1), plog.epoch)
                if part.error == ErrorCode.none:
                    part.log = plog
    max_total = min(request.max_bytes if request.max_bytes > 0 else broker.config.fetch_max_bytes,
                    broker.config.fetch_max_bytes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.max_wait.total_seconds()
    memory = response_memory.current.get()
    lease = memory.reserve(0) if memory is not None else None
    committed = getattr(request, "isolation_level", 0) == READ_COMMITTED
    while True:
        waiter: asyncio.Future[None] = loop.create_future()
        # Reserve before reading (the first batch is read even when the budget is spent); hold what was read.
        limit = max_total if lease is None else lease.grow_to(max_total)
        total = await _read_all(plan, limit, waiter, committed)
        if lease is not None:
            lease.settle(total)
        remaining = deadline - loop.time()
        if total >= max(request.min_bytes, 1) or remaining <= 0 or _any_error(plan):
            _discard(plan, waiter)
            break
        try:
            with traffic.purgatory("fetch"):  # the long poll: waiting for min.bytes until max.wait.ms
                await asyncio.wait_for(waiter, remaining)
        except TimeoutError:
            pass
        finally:
            _discard(plan, waiter)
    _count_out(ctx, plan)
    return _response(ctx, plan, committed)


def _count_out(ctx: RequestContext, plan: list[tuple[Any, list[_Part]]]) -> None:
    """Bytes out per topic (tidelog_topic_bytes_out_total)."""
    for _t, parts in plan:
        for p in parts:
            if p.records:
                topic = ctx.broker.topics.by_id(p.topic_id)
                if topic is not None:
                    traffic.fetched(topic.name, sum(len(b) for b in p.records))


def _any_error(plan: list[tuple[Any, list[_Part]]]) -> bool:
    return any(p.error != ErrorCode.none for _t, parts in plan for p in parts)


def _discard(plan: list[tuple[Any, list[_Part]]], waiter: asyncio.Future[None]) -> None:
    for _t, parts in plan:
        for p in parts:
            if p.log is not None:
                p.log.discard_waiter(waiter)


async def _read_all(
    plan: list[tuple[Any, list[_Part]]], max_total: int, waiter: asyncio.Future[None], committed: bool = False
) -> int:
    """Read every partition in request order within the limits (Kafka's ReplicaManager.readFromLog): each
    partition at most ``partition_max_bytes`` and all together at most ``max_total``, in whole batches,
    except that the first partition returning anything gets its first batch whole whatever its size; a
    later partition whose next batch does not fit what is left returns nothing this time."""
    total = 0
    first = True  # no partition has returned data yet (Kafka's minOneMessage)
    for _t, parts in plan:
        for part in parts:
            plog = part.log
            if plog is None:
                continue
            budget = max(0, min(part.max_bytes, max_total - total))
            part.lso = plog.last_stable_offset
            if budget <= 0 and not first:
                part.records = []
                part.hw, part.start = plog.high_watermark, plog.log_start_offset
                continue
            try:
                result = await plog.read(part.offset, budget, min_one=first, committed=committed)
                part.aborted = []
                if committed and result.batches:
                    end = iter_headers(result.batches[-1])[-1].last_offset + 1
                    part.aborted = await plog.aborted_transactions(part.offset, end)
            except LogError as e:
                part.error = e.code
                part.records = []
                part.hw, part.start = plog.high_watermark, plog.log_start_offset
                continue
            part.records = result.batches
            part.hw, part.start = result.high_watermark, result.log_start_offset
            size = sum(len(b) for b in result.batches)
            total += size
            if size:
                first = False
            else:
                plog.add_waiter(waiter)
    return total


def _response(ctx: RequestContext, plan: list[tuple[Any, list[_Part]]], committed: bool = False) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    by_id = ctx.api_version >= 13
    hints = Hints()
    responses = []
    for topic_ref, parts in plan:
        datas = []
        for p in parts:
            records = Chunks(p.records) if p.records else None  # written to the socket unjoined
            extra = {}
            if p.error in HINTED and p.topic_id and ctx.api_version >= 12:
                hint = ctx.broker.not_leader(p.topic_id, p.index, "")  # KIP-951: who leads now
                extra["current_leader"] = current_leader(mod, hint.leader)
                hints.add(hint.endpoint)
            datas.append(
                make(
                    mod.PartitionData,
                    partition_index=p.index,
                    error_code=p.error,
                    high_watermark=p.hw,
                    last_stable_offset=p.lso if p.lso >= 0 else p.hw,
                    log_start_offset=p.start,
                    aborted_transactions=tuple(
                        make(mod.AbortedTransaction, producer_id=pid, first_offset=first) for pid, first in p.aborted
                    ) if committed else None,
                    preferred_read_replica=-1,
                    records=records if records is not None else b"",
                    **extra,
                )
            )
        if by_id:
            responses.append(
                make(mod.FetchableTopicResponse, topic_id=topic_ref or uuid.UUID(int=0), partitions=tuple(datas))
            )
        else:
            responses.append(make(mod.FetchableTopicResponse, topic=topic_ref, partitions=tuple(datas)))
    return make(
        mod.FetchResponse,
        throttle_time=NO_THROTTLE,
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(responses),
        node_endpoints=hints.node_endpoints(mod, ctx),
    )
