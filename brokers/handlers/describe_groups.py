"""DescribeGroups (15), v0-v6: state, protocol and members (with metadata and assignment once Stable)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.base import GroupError
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 15
MIN_VERSION = 0
MAX_VERSION = 6


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    wants_ops = getattr(request, "include_authorized_operations", False)
    groups = []
    for group_id in request.groups:
        code, message = ErrorCode.none, None
        description = None
        try:
            if not ctx.allowed(AclOperation.DESCRIBE, ResourceType.GROUP, group_id):
                raise GroupError(ErrorCode.group_authorization_failed, "Group authorization failed.")
            description = ctx.broker.groups.describe(group_id)
        except GroupError as e:
            code, message = e.code, str(e)
        if description is None and code is ErrorCode.none and ctx.api_version >= 6:
            code, message = ErrorCode.group_id_not_found, f"group {group_id!r} does not exist"
        members = ()
        if description is not None:
            members = tuple(
                make(
                    mod.DescribedGroupMember, member_id=m.member_id, group_instance_id=m.group_instance_id,
                    client_id=m.client_id, client_host=m.client_host, member_metadata=m.metadata,
                    member_assignment=m.assignment,
                )
                for m in description.members
            )
        groups.append(
            make(
                mod.DescribedGroup,
                error_code=code,
                error_message=message,
                group_id=group_id,
                group_state=description.state if description is not None else "Dead",
                protocol_type=description.protocol_type if description is not None else "",
                protocol_data=description.protocol if description is not None else "",
                members=members,
                authorized_operations=ctx.operations(ResourceType.GROUP, group_id, wants_ops),
            )
        )
    return make(mod.DescribeGroupsResponse, throttle_time=NO_THROTTLE, groups=tuple(groups))
