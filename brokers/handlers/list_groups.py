"""ListGroups (16), v0-v5: every group this broker coordinates (v4+: states filter, v5+: types filter)."""

from __future__ import annotations

from typing import Any

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType

API_KEY = 16
MIN_VERSION = 0
MAX_VERSION = 5


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    every = ctx.allowed(AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME)  # else the groups it may DESCRIBE
    code, groups = ctx.broker.groups.list_groups(
        getattr(request, "states_filter", ()), getattr(request, "types_filter", ())
    )
    return make(
        mod.ListGroupsResponse,
        throttle_time=NO_THROTTLE,
        error_code=code,
        groups=tuple(
            make(
                mod.ListedGroup, group_id=g.group_id, protocol_type=g.protocol_type, group_state=g.state,
                group_type=g.group_type,
            )
            for g in groups
            if every or ctx.allowed(AclOperation.DESCRIBE, ResourceType.GROUP, g.group_id)
        ),
    )
