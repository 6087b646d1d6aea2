"""JoinGroup (11), v0-v9: join (or rejoin) a classic group; may wait until the rebalance completes.

v4+ does the MEMBER_ID_REQUIRED handshake (KIP-394); v5+ carries group.instance.id (static membership);
v9 tells a rejoining static leader to skip assignment (KIP-814).
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.member import JoinRequest, JoinResult
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 11
MIN_VERSION = 0
MAX_VERSION = 9


def client_host(ctx: RequestContext) -> str:
    """The client's address as Kafka reports it (``/ip``)."""
    return "/" + ctx.peer.rsplit(":", 1)[0]


def _ms(td: Any) -> int:
    return int(td.total_seconds() * 1000)


async def handle(ctx: RequestContext, request: Any) -> Any:
    version = ctx.api_version
    session_ms = _ms(request.session_timeout)
    rebalance = getattr(request, "rebalance_timeout", None)
    rebalance_ms = _ms(rebalance) if version >= 1 and rebalance is not None else session_ms
    if rebalance_ms < 0:
        rebalance_ms = session_ms
    if not request.group_id:
        result = JoinResult(ErrorCode.invalid_group_id, request.member_id)
    elif not ctx.allowed(AclOperation.READ, ResourceType.GROUP, request.group_id):
        result = JoinResult(ErrorCode.group_authorization_failed, request.member_id)
    else:
        join = JoinRequest(
            group_id=request.group_id,
            member_id=request.member_id,
            group_instance_id=getattr(request, "group_instance_id", None),
            client_id=ctx.client_id or "",
            client_host=client_host(ctx),
            session_timeout_ms=session_ms,
            rebalance_timeout_ms=rebalance_ms,
            protocol_type=request.protocol_type,
            protocols=tuple((p.name, p.metadata) for p in request.protocols),
            require_known_member_id=version >= 4,
            reason=getattr(request, "reason", None),
        )
        result = await ctx.broker.groups.join(join, supports_skip_assignment=version >= 9)
    return _response(ctx, result)


def _response(ctx: RequestContext, result: JoinResult) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    protocol_name = result.protocol_name
    if ctx.api_version < 7 and protocol_name is None:
        protocol_name = ""
    members = tuple(
        make(mod.JoinGroupResponseMember, member_id=m, group_instance_id=i, metadata=md)
        for m, i, md in result.members
    )
    return make(
        mod.JoinGroupResponse,
        throttle_time=NO_THROTTLE,
        error_code=result.error,
        generation_id=result.generation,
        protocol_type=result.protocol_type,
        protocol_name=protocol_name,
        leader=result.leader,
        skip_assignment=result.skip_assignment,
        member_id=result.member_id,
        members=members,
    )
