"""ConsumerGroupDescribe (69), v0..v1: members, their current and target assignments, epochs, assignor."""

from __future__ import annotations

import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.groups.assignors import Assignment
from brokers.groups.base import GroupError
from brokers.groups.consumer import ConsumerGroup
from brokers.groups.consumer_shard import consumer_groups_for
from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 69
MIN_VERSION = 0
MAX_VERSION = 1
CLASSIC_MEMBER = 0  # KIP-1099 MemberType: a classic-protocol member of a consumer group (online migration)
CONSUMER_MEMBER = 1
UNSET_OPERATIONS = -(2**31)


def _assignment(mod: Any, assignment: Assignment, names: dict[str, str]) -> Any:
    by_topic: dict[str, list[int]] = {}
    for tid, p in assignment:
        by_topic.setdefault(tid, []).append(p)
    return mod.Assignment(
        topic_partitions=tuple(
            mod.TopicPartitions(topic_id=uuid.UUID(tid), topic_name=names.get(tid, ""), partitions=tuple(sorted(ps)))
            for tid, ps in sorted(by_topic.items(), key=lambda kv: (names.get(kv[0], ""), kv[0]))
        )
    )


def _error(mod: Any, group_id: str, code: ErrorCode, message: str) -> Any:
    return make(
        mod.DescribedGroup, error_code=code, error_message=message, group_id=group_id, group_state="",
        group_epoch=-1, assignment_epoch=-1, assignor_name="", members=(), authorized_operations=UNSET_OPERATIONS,
    )


async def describe_one(ctx: RequestContext, mod: Any, group_id: str, operations: int) -> Any:
    """One DescribedGroup, or its error."""
    try:
        groups = consumer_groups_for(ctx.broker, group_id)
    except GroupError as e:
        return _error(mod, group_id, e.code, str(e))
    group = groups.shard.groups.get(group_id)
    if group is None or getattr(group, "dead", False):
        return _error(mod, group_id, ErrorCode.group_id_not_found, f"group {group_id!r} not found")
    if not isinstance(group, ConsumerGroup):
        return _error(mod, group_id, ErrorCode.group_id_not_found, f"group {group_id!r} is not a consumer group")
    names = group.topic_names()
    for tid in {tid for a in group.target.values() for tid, _ in a} - names.keys():
        topic = ctx.broker.topics.by_id(tid)
        if topic is not None:
            names[tid] = topic.name
    members = tuple(
        make(
            mod.Member,
            member_id=m.member_id,
            instance_id=m.sub.instance_id,
            rack_id=m.sub.rack_id,
            member_epoch=m.epoch,
            client_id=m.sub.client_id,
            client_host=m.sub.client_host,
            subscribed_topic_names=m.sub.subscribed_topic_names,
            subscribed_topic_regex=m.sub.subscribed_topic_regex,
            assignment=_assignment(mod, m.cur.assigned, names),
            target_assignment=_assignment(mod, group.target.get(m.member_id, frozenset()), names),
            member_type=CLASSIC_MEMBER if m.uses_classic else CONSUMER_MEMBER,
        )
        for m in sorted(group.members.values(), key=lambda m: m.member_id)
    )
    return make(
        mod.DescribedGroup,
        error_code=ErrorCode.none,
        error_message=None,
        group_id=group_id,
        group_state=group.state,
        group_epoch=group.group_epoch,
        assignment_epoch=group.assignment_epoch,
        assignor_name=group.preferred_assignor(),
        members=members,
        authorized_operations=operations,
    )


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    wanted = bool(request.include_authorized_operations)
    described = [
        await describe_one(ctx, mod, str(g), ctx.operations(ResourceType.GROUP, str(g), wanted))
        if ctx.allowed(AclOperation.DESCRIBE, ResourceType.GROUP, str(g))
        else _error(mod, str(g), ErrorCode.group_authorization_failed, "Group authorization failed.")
        for g in request.group_ids
    ]
    return make(mod.ConsumerGroupDescribeResponse, throttle_time=NO_THROTTLE, groups=tuple(described))
