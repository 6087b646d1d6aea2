"""SyncGroup (14), v0-v5: the leader hands in the assignment; every member gets its own share back."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.member import SyncResult
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 14
MIN_VERSION = 0
MAX_VERSION = 5


async def handle(ctx: RequestContext, request: Any) -> Any:
    if not request.group_id:
        result = SyncResult(ErrorCode.invalid_group_id)
    elif not ctx.allowed(AclOperation.READ, ResourceType.GROUP, request.group_id):
        result = SyncResult(ErrorCode.group_authorization_failed)
    else:
        result = await ctx.broker.groups.sync(
            request.group_id,
            request.member_id,
            getattr(request, "group_instance_id", None),
            request.generation_id,
            getattr(request, "protocol_type", None),
            getattr(request, "protocol_name", None),
            {a.member_id: a.assignment for a in request.assignments},
        )
    mod = response_module(API_KEY, ctx.api_version)
    return make(
        mod.SyncGroupResponse,
        throttle_time=NO_THROTTLE,
        error_code=result.error,
        protocol_type=result.protocol_type,
        protocol_name=result.protocol_name,
        assignment=result.assignment,
    )
