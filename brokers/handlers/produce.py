"""Produce (0): validate batches (framing, CRC-32C, size, then Kafka's LogValidator rules in
brokers/codec/validate.py), append, answer once quorum-durable.

A refused batch appends nothing for its partition; the others in the request go on. acks=1 and acks=all
both mean durable on an ack quorum of bookies; acks=0 gets no response.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.codec.batch import TIMESTAMP_TYPE_FLAG, BatchError, BatchHeader, UnsupportedMagic, restamp, validate
from brokers.codec.produce_response import encode_success
from brokers.codec.validate import (
    InvalidRecord,
    InvalidTimestamp,
    TopicRules,
    UnsupportedCompression,
    check_request_batches,
    validate_batch,
)
from brokers.config import BrokerConfig
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.leadership import Hints, current_leader
from brokers.log.partition import OPEN_TXN, AppendResult, LogError, PartitionLog
from brokers.observability import traffic
from brokers.security.acl import AclOperation, ResourceType
from brokers.topics import INTERNAL_TOPICS
from brokers.txn_markers import verifier_of

log = logging.getLogger(__name__)

API_KEY = 0
MIN_VERSION = 3
MAX_VERSION = 12
ADVERTISED_MIN_VERSION = 0  # v0-2 are refused (message formats v0/v1), but librdkafka needs to see v0
IMPLICIT_ADD_SINCE = 12
"""KIP-890 part 2: from v12 a transactional write's partition is added to the producer's transaction by this
leader (a TV2 producer sends no AddPartitionsToTxn), when the broker finalizes transaction.version 2."""


class _Outcome:
    __slots__ = ("append_time", "error", "message", "pending", "record_errors", "result", "topic_id")

    def __init__(self) -> None:
        self.error = ErrorCode.none
        self.message: str | None = None
        self.pending: asyncio.Future[AppendResult] | None = None
        self.result: AppendResult | None = None
        self.record_errors: tuple[tuple[int, str], ...] = ()
        self.append_time = -1
        self.topic_id = ""

    def fail(self, code: ErrorCode, message: str, record_errors: tuple[tuple[int, str], ...] = ()) -> None:
        self.error, self.message, self.record_errors = code, message, record_errors


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    outcomes: list[tuple[str, list[tuple[int, _Outcome]]]] = []
    await ctx.in_order()
    txn_id = request.transactional_id
    txn_allowed = txn_id is None or ctx.allowed(AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, txn_id)
    try:
        for topic_data in request.topic_data:
            name = topic_data.name
            parts: list[tuple[int, _Outcome]] = []
            outcomes.append((name, parts))
            refusal = _refusal(ctx, name, txn_allowed)
            if refusal is not None:
                for pdata in topic_data.partition_data:
                    parts.append((pdata.index, out := _Outcome()))
                    out.fail(*refusal)
                continue
            topic = broker.topics.get(name)
            max_message = int(
                (topic.configs.get("max.message.bytes") if topic else None) or broker.config.message_max_bytes
            )
            rules = topic_rules(topic.configs if topic else {}, broker.config)
            for pdata in topic_data.partition_data:
                out = _Outcome()
                parts.append((pdata.index, out))
                if topic is None and (problem := broker.topics.name_refusal(name)) is not None:
                    out.fail(ErrorCode.invalid_topic_exception, problem)  # cannot be created: no point retrying
                    continue
                if topic is None or not 0 <= pdata.index < topic.partitions:
                    out.fail(ErrorCode.unknown_topic_or_partition, f"{name}/{pdata.index} does not exist")
                    continue
                if name in INTERNAL_TOPICS:
                    out.fail(ErrorCode.invalid_topic_exception, f"cannot append to internal topic {name}")
                    continue
                records = pdata.records
                if not records:  # ProduceRequest.validateRecords: at least one record batch
                    out.fail(ErrorCode.invalid_record, "no record batch for the partition")
                    continue
                checked = _check(records, max_message, rules, ctx.api_version, request.transactional_id, out)
                if checked is None:
                    continue
                records, headers = checked
                out.topic_id = topic.topic_id
                try:
                    plog = await broker.serving_log(topic.topic_id, pdata.index)
                    guard = None
                    if headers[0].is_transactional:
                        guard = await _verified(ctx, plog, request.transactional_id, headers[0], name, pdata.index)
                    out.pending = await plog.append(records, headers, guard=guard)
                    traffic.produced(name, len(records), sum(h.records_count for h in headers))
                except LogError as e:
                    out.fail(e.code, str(e))
    finally:
        ctx.appended()
    with traffic.purgatory("produce"):  # waiting for the bookie quorum (Kafka's acks=all purgatory)
        for _name, parts in outcomes:
            for _index, out in parts:
                if out.pending is not None:
                    try:
                        out.result = await out.pending
                    except LogError as e:
                        out.fail(e.code, str(e))
    if request.acks == 0:
        failed = next((out for _name, parts in outcomes for _i, out in parts if out.error != ErrorCode.none), None)
        if failed is not None:
            # As Kafka does: with no response to carry the error, closing the connection is how an acks=0
            # producer learns that something went wrong (and refreshes its metadata).
            from brokers.server import CloseConnection  # here: the server imports the handlers

            raise CloseConnection(f"acks=0 produce failed: {failed.error.name}: {failed.message}")
        return None
    return _response(ctx, outcomes)


def _refusal(ctx: RequestContext, name: str, txn_allowed: bool) -> tuple[ErrorCode, str] | None:
    """The authorization error of producing to ``name`` (Kafka's order: the transactional id, then the topic)."""
    if not txn_allowed:
        return ErrorCode.transactional_id_authorization_failed, "Transactional Id authorization failed."
    if not ctx.allowed(AclOperation.WRITE, ResourceType.TOPIC, name):
        return ErrorCode.topic_authorization_failed, f"Not authorized to write to topic {name}."
    return None


def _response(ctx: RequestContext, outcomes: list[tuple[str, list[tuple[int, _Outcome]]]]) -> Any:
    if all(out.result is not None and out.error == ErrorCode.none for _n, parts in outcomes for _i, out in parts):
        # Every partition appended: the fixed-shape body, packed without kio (the server sends bytes as they are).
        return encode_success(
            ctx.api_version,
            [
                (name, [(index, out.result.base_offset, out.append_time, out.result.log_start_offset)
                        for index, out in parts if out.result is not None])
                for name, parts in outcomes
            ],
        )  # fmt: skip
    mod = response_module(API_KEY, ctx.api_version)
    hints = Hints()
    topics = []
    for name, parts in outcomes:
        responses = []
        for index, out in parts:
            result = out.result
            leader = None
            if out.error == ErrorCode.not_leader_or_follower and out.topic_id and ctx.api_version >= 10:
                # KIP-951: who leads now (also when the append failed after it was queued: deposed meanwhile)
                hint = ctx.broker.not_leader(out.topic_id, index, "")
                leader = current_leader(mod, hint.leader)
                hints.add(hint.endpoint)
            responses.append(
                make(
                    mod.PartitionProduceResponse,
                    index=index,
                    error_code=out.error,
                    base_offset=result.base_offset if result else -1,
                    log_append_time=_append_time(out.append_time if result else -1),
                    log_start_offset=result.log_start_offset if result else -1,
                    record_errors=tuple(
                        make(mod.BatchIndexAndErrorMessage, batch_index=i, batch_index_error_message=m)
                        for i, m in out.record_errors
                    ),
                    error_message=out.message,
                    **({"current_leader": leader} if leader is not None else {}),
                )
            )
        topics.append(make(mod.TopicProduceResponse, name=name, partition_responses=tuple(responses)))
    endpoints = hints.node_endpoints(mod, ctx)
    return make(mod.ProduceResponse, responses=tuple(topics), throttle_time=NO_THROTTLE, node_endpoints=endpoints)


def topic_rules(configs: dict[str, str], config: BrokerConfig) -> TopicRules:
    """The validation rules of a topic: its message.timestamp.* and cleanup.policy, else the broker's."""
    ts_type = configs.get("message.timestamp.type") or config.log_message_timestamp_type
    before = configs.get("message.timestamp.before.max.ms")
    after = configs.get("message.timestamp.after.max.ms")
    return TopicRules(
        log_append_time=ts_type == "LogAppendTime",
        before_max_ms=_ms(before, config.log_message_timestamp_before_max_ms),
        after_max_ms=_ms(after, config.log_message_timestamp_after_max_ms),
        compacted="compact" in (configs.get("cleanup.policy") or ""),
    )


def _ms(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        return max(0, int(value))
    except ValueError:
        return max(0, int(float(value)))


def _check(
    records: bytes,
    max_message: int,
    rules: TopicRules,
    version: int,
    transactional_id: str | None,
    out: _Outcome,
) -> tuple[bytes, list[BatchHeader]] | None:
    """The partition's records and batch headers ready to append, or None with ``out`` failed."""
    try:
        headers = validate(records)
        head = check_request_batches(headers)
        if head.size > max_message:
            out.fail(ErrorCode.message_too_large, f"batch of {head.size} bytes exceeds max.message.bytes={max_message}")
            return None
        now = int(time.time() * 1000)
        checked = validate_batch(records, head, rules, now, version)
    except UnsupportedMagic as e:  # ProduceRequest.validateRecords: v3+ carries magic 2 only
        out.fail(ErrorCode.invalid_record, str(e))
        return None
    except UnsupportedCompression as e:
        out.fail(ErrorCode.unsupported_compression_type, str(e))
        return None
    except InvalidTimestamp as e:
        out.fail(ErrorCode.invalid_timestamp, str(e), e.record_errors)
        return None
    except InvalidRecord as e:
        out.fail(ErrorCode.invalid_record, str(e), e.record_errors)
        return None
    except BatchError as e:
        out.fail(ErrorCode.corrupt_message, str(e))
        return None
    if head.is_transactional and transactional_id is None:
        # As Kafka's KafkaApis: transactional records are authorized by their transactional id; without one
        # they cannot be.
        out.fail(ErrorCode.transactional_id_authorization_failed, "transactional records need a transactional id")
        return None
    if rules.log_append_time:
        buf = bytearray(records)
        head = restamp(buf, head, head.attributes | TIMESTAMP_TYPE_FLAG, now)
        out.append_time = now
        return bytes(buf), [head]
    if checked.max_timestamp != head.max_timestamp:
        buf = bytearray(records)
        head = restamp(buf, head, head.attributes, checked.max_timestamp)
        return bytes(buf), [head]
    return records, headers


RETRIABLE_VERIFY = frozenset({
    ErrorCode.coordinator_not_available, ErrorCode.not_coordinator, ErrorCode.coordinator_load_in_progress,
    ErrorCode.concurrent_transactions, ErrorCode.request_timed_out, ErrorCode.network_exception,
})  # fmt: skip
"""Coordinator answers a producer would not retry on a Produce: mapped to NOT_ENOUGH_REPLICAS, as Kafka does."""


async def _verified(
    ctx: RequestContext, plog: PartitionLog, transactional_id: str | None, head: BatchHeader, topic: str, index: int
) -> object | None:
    """KIP-890 part 1: the guard to append a transactional batch with. A producer whose transaction is already
    open on the partition needs no verification; otherwise the coordinator must confirm the partition was added
    to its open transaction (else the batch is refused: it could start a transaction no marker ever ends).
    Part 2 (v12+, transaction.version 2): the coordinator adds the partition instead of only checking it."""
    verifier = verifier_of(ctx.broker)
    if verifier is None or transactional_id is None:
        return None  # no transaction coordinator on this broker: appended unverified
    guard = plog.verification_guard(head.producer_id)
    if guard is OPEN_TXN:
        return guard
    try:
        add = ctx.api_version >= IMPLICIT_ADD_SINCE and ctx.broker.config.transaction_version >= 2
        code = await verifier.verify_partition(
            transactional_id, head.producer_id, head.producer_epoch, topic, index, add=add
        )
    except Exception as e:
        log.warning("verifying %s/%d for transactional id %r failed: %r", topic, index, transactional_id, e)
        code = ErrorCode.coordinator_not_available
    if code == ErrorCode.none:
        return guard
    plog.forget_guard(head.producer_id, guard)
    if code in RETRIABLE_VERIFY:
        raise LogError(ErrorCode.not_enough_replicas, f"cannot verify the transaction now ({code.name}); retry")
    if code == ErrorCode.producer_fenced:  # Produce's own word for a fenced producer epoch
        raise LogError(ErrorCode.invalid_producer_epoch, f"producer {head.producer_id} is fenced by a newer epoch")
    raise LogError(code, f"{topic}/{index} is not part of producer {head.producer_id}'s open transaction")


def _append_time(ms: int) -> datetime.datetime | None:
    if ms < 0:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
