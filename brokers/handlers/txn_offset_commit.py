"""TxnOffsetCommit (API 28), v0-v4: a consumer group's offsets committed inside a producer's transaction.

Sent to the group coordinator after AddOffsetsToTxn put the group's ``__consumer_offsets`` partition into the
transaction. The offsets are written there as the producer's transactional batch and stay pending — invisible
to OffsetFetch, UNSTABLE_OFFSET_COMMIT with ``require_stable`` — until the transaction coordinator's marker
commits or aborts them (brokers/groups/txn_offsets.py). The member and generation are checked as OffsetCommit
checks them (v3+ carry them, KIP-447; v0-v2 commit without a member). The producer is checked twice: its
epoch must not be older than one the group's shard has seen (INVALID_PRODUCER_EPOCH), and, when a
transaction coordinator runs, the offsets partition must be in the producer's open transaction (KIP-890's
verification; its error is passed on). v5 (KIP-890 part 2: the partition added implicitly) is not offered.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.base import GroupError
from brokers.groups.coordinator import OFFSETS_TOPIC
from brokers.groups.offsets import CommitRequest
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module

API_KEY = 28
MIN_VERSION = 0
MAX_VERSION = 4


async def _verify(ctx: RequestContext, request: Any) -> ErrorCode:
    """This broker must coordinate the group (NOT_COORDINATOR, ... first, so the client looks it up again), and
    the group's offsets partition must be in the producer's ongoing transaction (KIP-890 part 1)."""
    groups = ctx.broker.groups
    try:
        groups.shard_for(request.group_id)
    except GroupError as e:
        return e.code
    transactions = getattr(ctx.broker, "transactions", None)
    if transactions is None:
        return ErrorCode.none
    code: ErrorCode = await transactions.verify_partition(
        request.transactional_id, request.producer_id, request.producer_epoch, OFFSETS_TOPIC,
        groups.partition_for(request.group_id),
    )
    return code


async def handle(ctx: RequestContext, request: Any) -> Any:
    plan = [
        (t.name, CommitRequest(t.name, p.partition_index, p.committed_offset,
                               getattr(p, "committed_leader_epoch", -1), p.committed_metadata))
        for t in request.topics
        for p in t.partitions
    ]
    if request.producer_id < 0 or request.producer_epoch < 0 or not request.transactional_id:
        codes = [ErrorCode.invalid_producer_id_mapping] * len(plan)
    elif (verified := await _verify(ctx, request)) is not ErrorCode.none:
        codes = [verified] * len(plan)
    else:
        codes = await ctx.broker.groups.commit_txn_offsets(
            request.group_id,
            getattr(request, "member_id", ""),
            getattr(request, "group_instance_id", None),
            getattr(request, "generation_id", -1),
            (request.producer_id, request.producer_epoch),
            [req for _name, req in plan],
            ctx.api_version,
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
