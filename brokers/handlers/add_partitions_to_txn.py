"""AddPartitionsToTxn (24): partitions join a producer's transaction at its coordinator (v0-v3, as clients send
it), and v4+'s batched form brokers send: several transactions at once, each either added or, with
``verify_only``, only checked (KIP-890 part 1: the partition leader asks whether a transactional write's
partition is in the open transaction before appending it), or else added (KIP-890 part 2: the leader adds the
partition of a TV2 producer's first write to it, which replaces the client's own AddPartitionsToTxn)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from brokers.transactions.coordinator import TP, TransactionCoordinator
from brokers.transactions.state import TV_2

API_KEY = 24
MIN_VERSION = 0
MAX_VERSION = 5
BATCHED_SINCE = 4
FENCED_SINCE = 2
"""PRODUCER_FENCED is answered from v2 (KIP-588); older clients get INVALID_PRODUCER_EPOCH."""


def _partitions(topics: Any) -> list[TP]:
    return [(t.name, int(p)) for t in topics for p in t.partitions]


def _topic_results(mod: Any, errors: dict[TP, ErrorCode]) -> tuple[Any, ...]:
    by_topic: dict[str, list[Any]] = {}
    for (topic, partition), code in errors.items():
        by_topic.setdefault(topic, []).append(
            make(mod.AddPartitionsToTxnPartitionResult, partition_index=partition, partition_error_code=code)
        )
    return tuple(make(mod.AddPartitionsToTxnTopicResult, name=t, results_by_partition=tuple(ps))
                 for t, ps in by_topic.items())


def _refused(ctx: RequestContext, transactional_id: str, tps: list[TP]) -> dict[TP, ErrorCode] | None:
    """Kafka's answer when the principal may not WRITE the transactional id (every partition refused) or some
    topic (those TOPIC_AUTHORIZATION_FAILED, the others OPERATION_NOT_ATTEMPTED); None when all is allowed."""
    if not ctx.allowed(AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, transactional_id):
        return dict.fromkeys(tps, ErrorCode.transactional_id_authorization_failed)
    denied = {t for t, _p in tps if not ctx.allowed(AclOperation.WRITE, ResourceType.TOPIC, t)}
    if not denied:
        return None
    return {
        tp: ErrorCode.topic_authorization_failed if tp[0] in denied else ErrorCode.operation_not_attempted
        for tp in tps
    }


async def _one(coordinator: TransactionCoordinator, txn: Any, tps: list[TP], verify_only: bool
               ) -> dict[TP, ErrorCode]:
    pid, epoch = int(txn.producer_id), int(txn.producer_epoch)
    if verify_only:
        return {tp: coordinator.verify_local(txn.transactional_id, pid, epoch, tp) for tp in tps}
    # Only partition leaders send v4+, and without verify_only only for a TV2 producer's implicit add (KIP-890
    # part 2: Produce v12+, TxnOffsetCommit v5+), so the transaction is recorded as a TV2 one.
    return await coordinator.add_partitions(txn.transactional_id, pid, epoch, tps, TV_2)


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    coordinator = ctx.broker.transactions
    if ctx.api_version < BATCHED_SINCE:
        tps = _partitions(request.v3_and_below_topics)
        pid, epoch = int(request.v3_and_below_producer_id), int(request.v3_and_below_producer_epoch)
        refused = _refused(ctx, request.v3_and_below_transactional_id, tps)
        errors = refused or await coordinator.add_partitions(request.v3_and_below_transactional_id, pid, epoch, tps)
        if ctx.api_version < FENCED_SINCE:
            errors = {tp: ErrorCode.invalid_producer_epoch if c == ErrorCode.producer_fenced else c
                      for tp, c in errors.items()}
        return make(mod.AddPartitionsToTxnResponse, throttle_time=NO_THROTTLE,
                    results_by_topic_v3_and_below=_topic_results(mod, errors))
    results = []
    if not ctx.allowed(AclOperation.CLUSTER_ACTION, ResourceType.CLUSTER, CLUSTER_NAME):  # brokers only, in Kafka
        return make(mod.AddPartitionsToTxnResponse, throttle_time=NO_THROTTLE,
                    error_code=ErrorCode.cluster_authorization_failed, results_by_transaction=())
    for txn in request.transactions:
        errors = await _one(coordinator, txn, _partitions(txn.topics), bool(txn.verify_only))
        results.append(make(mod.AddPartitionsToTxnResult, transactional_id=txn.transactional_id,
                            topic_results=_topic_results(mod, errors)))
    return make(mod.AddPartitionsToTxnResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none,
                results_by_transaction=tuple(results))
