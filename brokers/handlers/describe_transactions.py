"""DescribeTransactions (65, KIP-664): a transactional id's state as its coordinator holds it (what
``kafka-transactions.sh describe`` shows). Asked of the id's coordinator: elsewhere NOT_COORDINATOR.

A transaction that has not started has no start time: Kafka sends -1 there, but kio (the wire codec of this
project's own client and CLI) refuses to decode a negative timestamp, so 0 (the epoch) is sent instead."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, ms, response_module
from brokers.security.acl import AclOperation, ResourceType
from brokers.transactions.shard import TxnError

API_KEY = 65
MIN_VERSION = 0
MAX_VERSION = 0


def _time(value_ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(max(value_ms, 0) / 1000, tz=datetime.UTC)


def _state(mod: Any, ctx: RequestContext, txn_id: str) -> Any:
    empty = {"transaction_state": "", "transaction_timeout": ms(0), "transaction_start_time": _time(-1),
             "producer_id": -1, "producer_epoch": -1, "topics": ()}
    if not ctx.allowed(AclOperation.DESCRIBE, ResourceType.TRANSACTIONAL_ID, txn_id):
        return make(mod.TransactionState, error_code=ErrorCode.transactional_id_authorization_failed,
                    transactional_id=txn_id, **empty)
    try:
        meta = ctx.broker.transactions.describe(txn_id)
    except TxnError as e:
        return make(mod.TransactionState, error_code=e.code, transactional_id=txn_id, **empty)
    if meta is None:
        return make(mod.TransactionState, error_code=ErrorCode.transactional_id_not_found, transactional_id=txn_id,
                    **empty)
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(meta.partitions):
        by_topic.setdefault(topic, []).append(partition)
    return make(
        mod.TransactionState, error_code=ErrorCode.none, transactional_id=txn_id,
        transaction_state=meta.state.kafka_name, transaction_timeout=ms(meta.timeout_ms),
        transaction_start_time=_time(meta.start_ms), producer_id=meta.producer_id,
        producer_epoch=meta.producer_epoch,
        topics=tuple(make(mod.TopicData, topic=t, partitions=tuple(ps)) for t, ps in by_topic.items()),
    )


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    return make(mod.DescribeTransactionsResponse, throttle_time=NO_THROTTLE,
                transaction_states=tuple(_state(mod, ctx, t) for t in request.transactional_ids))
