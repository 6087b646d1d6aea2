"""OffsetFetch (9), v1-v10: committed offsets of one group (v8+: several groups; v10: topics by id).

Offsets of an open transaction (TxnOffsetCommit) are never returned; with ``require_stable`` (v7+, KIP-447:
what a read_committed consumer sends) a partition that has some answers UNSTABLE_OFFSET_COMMIT with offset -1,
and the client retries until the transaction's marker lands. A partition with no committed offset answers
offset -1.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.base import GroupError
from brokers.groups.offsets import FetchedOffset
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 9
MIN_VERSION = 1
MAX_VERSION = 10


async def _fetch(
    ctx: RequestContext, group_id: str, topics: Sequence[tuple[str, Sequence[int]]] | None,
    member_id: str | None, member_epoch: int, require_stable: bool = False,
) -> tuple[ErrorCode, list[FetchedOffset]]:
    if not ctx.allowed(AclOperation.DESCRIBE, ResourceType.GROUP, group_id):
        return ErrorCode.group_authorization_failed, []
    try:
        fetched = await ctx.broker.groups.fetch_offsets(group_id, topics, member_id, member_epoch, require_stable)
    except GroupError as e:
        return e.code, []
    if not ctx.broker.authorizer.enabled:
        return ErrorCode.none, fetched
    # Topics the principal may not DESCRIBE: left out of an all-topics answer, TOPIC_AUTHORIZATION_FAILED if asked.
    visible = {n for n in {f.topic for f in fetched} if ctx.allowed(AclOperation.DESCRIBE, ResourceType.TOPIC, n)}
    refused = ErrorCode.topic_authorization_failed
    return ErrorCode.none, [
        f if f.topic in visible else FetchedOffset(f.topic, f.partition, -1, -1, "", refused)
        for f in fetched
        if f.topic in visible or topics is not None
    ]


def _by_topic(fetched: list[FetchedOffset]) -> dict[str, list[FetchedOffset]]:
    out: dict[str, list[FetchedOffset]] = {}
    for f in fetched:
        out.setdefault(f.topic, []).append(f)
    return out


async def handle(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    mod = response_module(API_KEY, version)
    if version < 8:
        requested = None if request.topics is None else [(t.name, t.partition_indexes) for t in request.topics]
        code, fetched = await _fetch(
            ctx, request.group_id, requested, None, -1, bool(getattr(request, "require_stable", False))
        )
        if version < 2 and code is not ErrorCode.none:  # v1 has no group-level error: repeat it per partition
            fetched = [FetchedOffset(t, p, -1, -1, "", code) for t, parts in requested or [] for p in parts]
        topics = tuple(
            make(
                mod.OffsetFetchResponseTopic,
                name=name,
                partitions=tuple(
                    make(
                        mod.OffsetFetchResponsePartition, partition_index=f.partition, committed_offset=f.offset,
                        committed_leader_epoch=f.leader_epoch, metadata=f.metadata, error_code=f.error,
                    )
                    for f in parts
                ),
            )
            for name, parts in _by_topic(fetched).items()
        )
        return make(mod.OffsetFetchResponse, throttle_time=NO_THROTTLE, topics=topics, error_code=code)
    groups = [await _group(ctx, mod, g, bool(request.require_stable)) for g in request.groups]
    return make(mod.OffsetFetchResponse, throttle_time=NO_THROTTLE, groups=tuple(groups))


async def _group(ctx: RequestContext, mod: Any, g: Any, require_stable: bool) -> Any:
    by_id = ctx.api_version >= 10
    unknown_ids: list[Any] = []
    requested: list[tuple[str, Sequence[int]]] | None = None
    if g.topics is not None:
        requested = []
        for t in g.topics:
            if by_id:
                found = ctx.broker.topics.by_id(str(t.topic_id)) if t.topic_id is not None else None
                if found is None:
                    unknown_ids.append(t)
                    continue
                requested.append((found.name, t.partition_indexes))
            else:
                requested.append((t.name, t.partition_indexes))
    code, fetched = await _fetch(
        ctx, g.group_id, requested, getattr(g, "member_id", None), getattr(g, "member_epoch", -1), require_stable
    )
    topics = []
    for name, parts in _by_topic(fetched).items():
        topic_id: uuid.UUID | None = None
        if by_id:
            found = ctx.broker.topics.get(name)
            if found is None:
                continue  # committed for a topic since deleted: it has no id to name it by
            topic_id = uuid.UUID(found.topic_id)
        topics.append(
            make(
                mod.OffsetFetchResponseTopics,
                name=name,
                topic_id=topic_id,
                partitions=tuple(
                    make(
                        mod.OffsetFetchResponsePartitions, partition_index=f.partition, committed_offset=f.offset,
                        committed_leader_epoch=f.leader_epoch, metadata=f.metadata, error_code=f.error,
                    )
                    for f in parts
                ),
            )
        )
    topics.extend(
        make(
            mod.OffsetFetchResponseTopics,
            topic_id=t.topic_id,
            partitions=tuple(
                make(
                    mod.OffsetFetchResponsePartitions, partition_index=p, committed_offset=-1,
                    committed_leader_epoch=-1, metadata="", error_code=ErrorCode.unknown_topic_id,
                )
                for p in t.partition_indexes
            ),
        )
        for t in unknown_ids
    )
    return make(mod.OffsetFetchResponseGroup, group_id=g.group_id, topics=tuple(topics), error_code=code)
