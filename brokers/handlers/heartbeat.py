"""Heartbeat (12), v0-v4: keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to rejoin."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 12
MIN_VERSION = 0
MAX_VERSION = 4


async def handle(ctx: RequestContext, request: Any) -> Any:
    if not request.group_id:
        code = ErrorCode.invalid_group_id
    elif not ctx.allowed(AclOperation.READ, ResourceType.GROUP, request.group_id):
        code = ErrorCode.group_authorization_failed
    else:
        code = await ctx.broker.groups.heartbeat(
            request.group_id, request.member_id, getattr(request, "group_instance_id", None), request.generation_id
        )
    mod = response_module(API_KEY, ctx.api_version)
    return make(mod.HeartbeatResponse, throttle_time=NO_THROTTLE, error_code=code)
