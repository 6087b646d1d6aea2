"""ConsumerGroupHeartbeat (68), v0..v1: the KIP-848 consumer group protocol with server-side assignment.

v0: the coordinator generates the member id when the joining request has none; v1: the client does.
A SubscribedTopicRegex (v1) is supported, in Python ``re`` syntax (Kafka uses RE2/J; the common subset is
the same), matched against whole topic names, internal topics excluded.
"""

from __future__ import annotations

import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.assignors import ASSIGNORS, Assignment
from brokers.groups.base import GroupError
from brokers.groups.consumer import LEAVE_EPOCH, LEAVE_STATIC_EPOCH, Heartbeat
from brokers.groups.consumer_shard import consumer_groups_for
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, ms, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 68
MIN_VERSION = 0
MAX_VERSION = 1
MAX_KEY_STRING = 0x7FFF  # group and member ids are int16-length strings in __consumer_offsets keys


def _invalid(message: str) -> GroupError:
    return GroupError(ErrorCode.invalid_request, message)


def validate(request: Any, version: int) -> None:
    """Kafka's request checks; raises GroupError (INVALID_REQUEST, UNSUPPORTED_ASSIGNOR)."""
    epoch = request.member_epoch
    if (version >= 1 or epoch > 0 or epoch == LEAVE_EPOCH) and not request.member_id:
        raise _invalid("MemberId can't be empty.")
    if not request.group_id:
        raise _invalid("GroupId can't be empty.")
    if request.instance_id == "":
        raise _invalid("InstanceId can't be empty.")
    if request.rack_id == "":
        raise _invalid("RackId can't be empty.")
    for name, value in (("GroupId", request.group_id), ("MemberId", request.member_id),
                        ("InstanceId", request.instance_id)):
        if value is not None and len(value.encode()) > MAX_KEY_STRING:
            raise _invalid(f"{name} is longer than {MAX_KEY_STRING} bytes.")
    regex = getattr(request, "subscribed_topic_regex", None)
    if epoch == 0:
        if request.rebalance_timeout.total_seconds() < 0:
            raise _invalid("RebalanceTimeoutMs must be provided in first request.")
        if request.topic_partitions is None or request.topic_partitions:
            raise _invalid("TopicPartitions must be empty when (re-)joining.")
        if request.subscribed_topic_names is None and regex is None:
            raise _invalid("Either SubscribedTopicNames or SubscribedTopicRegex must be non-null when (re-)joining.")
    elif epoch == LEAVE_STATIC_EPOCH:
        if request.instance_id is None:
            raise _invalid("InstanceId can't be null.")
    elif epoch < LEAVE_STATIC_EPOCH:
        raise _invalid("MemberEpoch is invalid.")
    if request.server_assignor is not None and request.server_assignor not in ASSIGNORS:
        raise GroupError(
            ErrorCode.unsupported_assignor,
            f"ServerAssignor {request.server_assignor} is not supported. Supported assignors: "
            f"{', '.join(sorted(ASSIGNORS))}.",
        )


def _owned(request: Any) -> Assignment | None:
    if request.topic_partitions is None:
        return None
    return frozenset((str(tp.topic_id), int(p)) for tp in request.topic_partitions for p in tp.partitions)


def heartbeat_of(ctx: RequestContext, request: Any) -> Heartbeat:
    """The request as the state machine takes it."""
    timeout_ms = int(request.rebalance_timeout.total_seconds() * 1000)
    names = request.subscribed_topic_names
    return Heartbeat(
        member_id=request.member_id,
        member_epoch=request.member_epoch,
        instance_id=request.instance_id,
        rack_id=request.rack_id,
        rebalance_timeout_ms=timeout_ms if timeout_ms >= 0 else -1,
        subscribed_topic_names=None if names is None else tuple(str(n) for n in names),
        subscribed_topic_regex=getattr(request, "subscribed_topic_regex", None),
        server_assignor=request.server_assignor,
        owned=_owned(request),
        client_id=ctx.client_id or "",
        client_host="/" + ctx.peer.rsplit(":", 1)[0],
    )


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    try:
        if not ctx.allowed(AclOperation.READ, ResourceType.GROUP, request.group_id):  # first, as in Kafka
            raise GroupError(ErrorCode.group_authorization_failed, "Group authorization failed.")
        validate(request, ctx.api_version)
        groups = consumer_groups_for(ctx.broker, request.group_id)
        outcome = await groups.heartbeat(request.group_id, heartbeat_of(ctx, request))
    except GroupError as e:
        return make(
            mod.ConsumerGroupHeartbeatResponse, throttle_time=NO_THROTTLE, error_code=e.code, error_message=str(e),
            member_id=None, member_epoch=0, heartbeat_interval=ms(0), assignment=None,
        )
    assignment = None
    if outcome.assignment is not None:
        by_topic: dict[str, list[int]] = {}
        for tid, p in outcome.assignment:
            by_topic.setdefault(tid, []).append(p)
        assignment = mod.Assignment(
            topic_partitions=tuple(
                mod.TopicPartitions(topic_id=uuid.UUID(tid), partitions=tuple(sorted(ps)))
                for tid, ps in sorted(by_topic.items())
            )
        )
    return make(
        mod.ConsumerGroupHeartbeatResponse,
        throttle_time=NO_THROTTLE,
        error_code=ErrorCode.none,
        error_message=None,
        member_id=outcome.member_id,
        member_epoch=outcome.member_epoch,
        heartbeat_interval=ms(groups.config.heartbeat_interval_ms),
        assignment=assignment,
    )
