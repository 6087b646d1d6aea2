"""LeaveGroup (13), v0-v5: members leave (v3+: several at once, by member id or group.instance.id)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.base import GroupError
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 13
MIN_VERSION = 0
MAX_VERSION = 5


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    if ctx.api_version < 3:
        leaving: list[tuple[str, str | None]] = [(request.member_id, None)]
    else:
        leaving = [(m.member_id, m.group_instance_id) for m in request.members]
    top = ErrorCode.none
    results: list[ErrorCode] = []
    if not request.group_id:
        top = ErrorCode.invalid_group_id
    elif not ctx.allowed(AclOperation.READ, ResourceType.GROUP, request.group_id):
        top = ErrorCode.group_authorization_failed
        results = [top] * len(leaving)
    else:
        try:
            results = await ctx.broker.groups.leave(request.group_id, leaving)
        except GroupError as e:
            top = e.code
    if ctx.api_version < 3:
        code = top if top is not ErrorCode.none else results[0]
        return make(mod.LeaveGroupResponse, throttle_time=NO_THROTTLE, error_code=code)
    members = tuple(
        make(mod.MemberResponse, member_id=m, group_instance_id=i, error_code=code)
        for (m, i), code in zip(leaving, results, strict=False)
    )
    return make(mod.LeaveGroupResponse, throttle_time=NO_THROTTLE, error_code=top, members=members)
