"""TxnOffsetCommit (API 28), v0-v4: a consumer group's offsets committed inside a producer's transaction.

Sent to the group coordinator after AddOffsetsToTxn put the group's ``__consumer_offsets`` partition into the
transaction. The offsets are written there as the producer's transactional batch and stay pending — invisible
to OffsetFetch, UNSTABLE_OFFSET_COMMIT with ``require_stable`` — until the transaction coordinator's marker
commits or aborts them (brokers/groups/txn_offsets.py). The member and generation are checked as OffsetCommit
checks them (v3+ carry them, KIP-447; v0-v2 commit without a member). The producer is checked twice: its
epoch must not be older than one the group's shard has seen (INVALID_PRODUCER_EPOCH), and, when a
transaction coordinator runs and the producer has no transaction open on the offsets partition yet, the
partition must be in its open transaction (KIP-890 part 1, with the partition log's verification guard as
Produce does; INVALID_TXN_STATE, PRODUCER_FENCED passed on, the coordinator's retriable answers as
COORDINATOR_NOT_AVAILABLE). v5 (KIP-890 part 2, with ``transaction.version`` 2 finalized): the offsets
partition is added to the transaction implicitly instead of verified, as a TV2 producer sends no AddOffsetsToTxn.
"""

from __future__ import annotations

import logging
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.coordinator import OFFSETS_TOPIC
from brokers.groups.offsets import CommitRequest, Verify
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType
from brokers.txn_markers import verifier_of

log = logging.getLogger(__name__)

API_KEY = 28
MIN_VERSION = 0
MAX_VERSION = 5
IMPLICIT_ADD_SINCE = 5
"""KIP-890 part 2 (H5): from v5, with transaction.version 2, the offsets partition is added to the producer's
transaction here (a TV2 producer sends no AddOffsetsToTxn) instead of only verified."""


RETRIABLE_VERIFY = frozenset({
    ErrorCode.coordinator_not_available, ErrorCode.not_coordinator, ErrorCode.coordinator_load_in_progress,
    ErrorCode.concurrent_transactions, ErrorCode.request_timed_out, ErrorCode.network_exception,
})  # fmt: skip
"""The transaction coordinator's retriable answers, passed on as COORDINATOR_NOT_AVAILABLE: a TxnOffsetCommit
client retries that one (NOT_COORDINATOR would send it looking for another *group* coordinator)."""


def _verifier(ctx: RequestContext, request: Any) -> Verify | None:
    """KIP-890 part 1: asks the transaction coordinator whether the group's offsets partition is in the producer's
    open transaction (None: this broker runs no transaction coordinator, the write is not verified)."""
    transactions = verifier_of(ctx.broker)
    if transactions is None:
        return None

    async def verify() -> ErrorCode:
        try:
            code = await transactions.verify_partition(
                request.transactional_id, request.producer_id, request.producer_epoch, OFFSETS_TOPIC,
                ctx.broker.groups.partition_for(request.group_id),
                add=ctx.api_version >= IMPLICIT_ADD_SINCE and ctx.broker.config.transaction_version >= 2,
            )
        except Exception as e:  # a coordinator unreachable or failing: the client retries
            log.warning("verifying %r for TxnOffsetCommit failed: %r", request.transactional_id, e)
            return ErrorCode.coordinator_not_available
        return ErrorCode.coordinator_not_available if code in RETRIABLE_VERIFY else code

    return verify


def _refusal(ctx: RequestContext, request: Any, topics: set[str]) -> ErrorCode | None:
    """Kafka's checks, in its order: WRITE on the transactional id, READ on the group, READ on every topic."""
    if not ctx.allowed(AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, request.transactional_id):
        return ErrorCode.transactional_id_authorization_failed
    if not ctx.allowed(AclOperation.READ, ResourceType.GROUP, request.group_id):
        return ErrorCode.group_authorization_failed
    if any(not ctx.allowed(AclOperation.READ, ResourceType.TOPIC, t) for t in topics):
        return ErrorCode.topic_authorization_failed
    return None


async def handle(ctx: RequestContext, request: Any) -> Any:
    plan = [
        (t.name, CommitRequest(t.name, p.partition_index, p.committed_offset,
                               getattr(p, "committed_leader_epoch", -1), p.committed_metadata))
        for t in request.topics
        for p in t.partitions
    ]
    if request.producer_id < 0 or request.producer_epoch < 0 or not request.transactional_id:
        codes = [ErrorCode.invalid_producer_id_mapping] * len(plan)
    elif (refused := _refusal(ctx, request, {name for name, _req in plan})) is not None:
        codes = [refused] * len(plan)
    else:
        codes = await ctx.broker.groups.commit_txn_offsets(
            request.group_id,
            getattr(request, "member_id", ""),
            getattr(request, "group_instance_id", None),
            getattr(request, "generation_id", -1),
            (request.producer_id, request.producer_epoch),
            [req for _name, req in plan],
            ctx.api_version,
            _verifier(ctx, request),
        )
    mod = response_module(API_KEY, ctx.api_version)
    topics: dict[str, list[Any]] = {}
    for (name, req), code in zip(plan, codes, strict=True):
        topics.setdefault(name, []).append(
            make(mod.TxnOffsetCommitResponsePartition, partition_index=req.partition, error_code=code)
        )
    return make(
        mod.TxnOffsetCommitResponse,
        throttle_time=NO_THROTTLE,
        topics=tuple(make(mod.TxnOffsetCommitResponseTopic, name=n, partitions=tuple(ps)) for n, ps in topics.items()),
    )
