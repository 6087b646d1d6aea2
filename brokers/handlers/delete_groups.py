"""DeleteGroups (42), v0-v2: delete empty groups with their committed offsets (tombstones, once durable)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 42
MIN_VERSION = 0
MAX_VERSION = 2


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    results = []
    for group_id in request.groups_names:
        if not ctx.allowed(AclOperation.DELETE, ResourceType.GROUP, group_id):
            code = ErrorCode.group_authorization_failed
        else:
            code = await ctx.broker.groups.delete_group(group_id)
        results.append(make(mod.DeletableGroupResult, group_id=group_id, error_code=code))
    return make(mod.DeleteGroupsResponse, throttle_time=NO_THROTTLE, results=tuple(results))
