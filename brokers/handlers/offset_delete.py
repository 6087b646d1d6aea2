"""OffsetDelete (47), v0: remove committed offsets of partitions the group no longer consumes."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.base import GroupError
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 47
MIN_VERSION = 0
MAX_VERSION = 0


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    partitions = [(t.name, p.partition_index) for t in request.topics for p in t.partitions]
    top = ErrorCode.none
    codes: list[ErrorCode] = []
    try:
        if not ctx.allowed(AclOperation.DELETE, ResourceType.GROUP, request.group_id):
            raise GroupError(ErrorCode.group_authorization_failed, "Group authorization failed.")
        denied = {t for t, _p in partitions if not ctx.allowed(AclOperation.READ, ResourceType.TOPIC, t)}
        allowed = [(t, p) for t, p in partitions if t not in denied]
        done = iter(await ctx.broker.groups.delete_offsets(request.group_id, allowed))
        codes = [ErrorCode.topic_authorization_failed if t in denied else next(done) for t, _p in partitions]
    except GroupError as e:
        top = e.code
    topics: dict[str, list[Any]] = {}
    if top is ErrorCode.none:
        for (name, index), code in zip(partitions, codes, strict=True):
            topics.setdefault(name, []).append(
                make(mod.OffsetDeleteResponsePartition, partition_index=index, error_code=code)
            )
    return make(
        mod.OffsetDeleteResponse,
        error_code=top,
        throttle_time=NO_THROTTLE,
        topics=tuple(make(mod.OffsetDeleteResponseTopic, name=n, partitions=tuple(p)) for n, p in topics.items()),
    )
