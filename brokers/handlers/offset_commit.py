"""OffsetCommit (8), v2-v10: committed offsets, answered once durable in ``__consumer_offsets``.

Group commits are checked against the member and generation (or, for KIP-848 groups, the member epoch);
generation -1 with no member id commits to an empty group (assign() consumers, admin tools). v10 names
topics by id.
"""

from __future__ import annotations

import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.offsets import CommitRequest
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 8
MIN_VERSION = 2
MAX_VERSION = 10
DEFAULT_RETENTION = -1


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    by_id = ctx.api_version >= 10
    # (response topic key, partition index, request or None when the topic id is unknown)
    plan: list[tuple[Any, int, CommitRequest | None]] = []
    for t in request.topics:
        name: str | None = t.name if not by_id else None
        if by_id:
            found = broker.topics.by_id(str(t.topic_id)) if t.topic_id is not None else None
            name = found.name if found is not None else None
        for p in t.partitions:
            req = None
            if name is not None:
                req = CommitRequest(
                    name, p.partition_index, p.committed_offset, getattr(p, "committed_leader_epoch", -1),
                    p.committed_metadata,
                )
            plan.append((t.topic_id if by_id else t.name, p.partition_index, req))
    group_ok = ctx.allowed(AclOperation.READ, ResourceType.GROUP, request.group_id)
    names = {r.topic for _k, _p, r in plan if r is not None}
    denied = {n for n in names if not ctx.allowed(AclOperation.READ, ResourceType.TOPIC, n)}
    valid = [r for _k, _p, r in plan if r is not None and r.topic not in denied] if group_ok else []
    retention = getattr(request, "retention_time", None)
    retention_ms = int(retention.total_seconds() * 1000) if retention is not None else DEFAULT_RETENTION
    codes = [] if not group_ok else await broker.groups.commit_offsets(
        request.group_id,
        request.member_id,
        getattr(request, "group_instance_id", None),
        request.generation_id_or_member_epoch,
        valid,
        ctx.api_version,
        retention_ms if retention_ms >= 0 else DEFAULT_RETENTION,
    )
    results = iter(codes)
    mod = response_module(API_KEY, ctx.api_version)
    topics: dict[Any, list[Any]] = {}
    for key, index, req in plan:
        if not group_ok:
            code = ErrorCode.group_authorization_failed
        elif req is not None and req.topic in denied:
            code = ErrorCode.topic_authorization_failed
        else:
            code = next(results) if req is not None else ErrorCode.unknown_topic_id
        part = make(mod.OffsetCommitResponsePartition, partition_index=index, error_code=code)
        topics.setdefault(key, []).append(part)
    return make(
        mod.OffsetCommitResponse,
        throttle_time=NO_THROTTLE,
        topics=tuple(
            make(
                mod.OffsetCommitResponseTopic,
                name=key if not by_id else None,
                topic_id=key if by_id else uuid.UUID(int=0),
                partitions=tuple(parts),
            )
            for key, parts in topics.items()
        ),
    )
