"""DescribeTopicPartitions (API 75, KIP-966): topics and their partitions, paginated.

Kafka 3.7+ clients describe topics with it (the Java admin's ``describeTopics``, kafka-python's
``describe_topic_partitions``) so that a topic of many partitions does not need one huge Metadata answer.
Answered as Kafka's ``DescribeTopicPartitionsRequestHandler`` and ``KRaftMetadataCache`` do:

* topics sorted by name; an empty topic list means every topic (then unknown ones cannot occur), a named
  topic that does not exist is UNKNOWN_TOPIC_OR_PARTITION, or INVALID_TOPIC_EXCEPTION if its name is illegal;
* at most ``response_partition_limit`` partitions per answer (at least 1, at most ``max.request.partition.size.limit``,
  2000 as Kafka's default); when the limit stops inside a topic, ``next_cursor`` names that topic and the
  first partition left out; when it stops at a topic boundary, the next topic and partition 0;
* a cursor starts at its topic and partition; topics named before it are skipped; a cursor whose topic is
  not among the named topics, or with a negative partition, is Kafka's InvalidRequestException: every named
  topic answered INVALID_REQUEST.

Partitions come from routing as Metadata's do: leader = owner and its epoch (-1 while unknown), replicas =
isr = [owner] (redundancy is the bookie quorum's), LEADER_NOT_AVAILABLE while no broker owns one. Eligible
leader replicas (KIP-966's ELR) do not exist here: the lists are empty, as Kafka reports them with ELR off.
"""

from __future__ import annotations

import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.routing import NO_LEADER
from brokers.security.acl import AclOperation, ResourceType
from brokers.topics import INTERNAL_TOPICS, TopicError, check_name
from metadata.models import TopicRecord

API_KEY = 75
MIN_VERSION = 0
MAX_VERSION = 0
MAX_PARTITION_LIMIT = 2000
"""Kafka's ``max.request.partition.size.limit`` default: the most partitions one answer holds."""


def _partition(ctx: RequestContext, mod: Any, topic: TopicRecord, index: int) -> Any:
    leader = ctx.broker.routing.leader(topic.topic_id, index)
    if leader is None or leader.node_id == NO_LEADER:
        return make(
            mod.DescribeTopicPartitionsResponsePartition,
            error_code=ErrorCode.leader_not_available,
            partition_index=index,
            leader_id=NO_LEADER,
            leader_epoch=-1,
            replica_nodes=(),
            isr_nodes=(),
            eligible_leader_replicas=(),
            last_known_elr=(),
            offline_replicas=(),
        )
    return make(
        mod.DescribeTopicPartitionsResponsePartition,
        error_code=ErrorCode.none,
        partition_index=index,
        leader_id=leader.node_id,
        leader_epoch=leader.epoch,
        replica_nodes=(leader.node_id,),
        isr_nodes=(leader.node_id,),
        eligible_leader_replicas=(),
        last_known_elr=(),
        offline_replicas=(),
    )


def _missing(mod: Any, name: str, code: ErrorCode | None = None) -> Any:
    try:
        check_name(name)
        code = code or ErrorCode.unknown_topic_or_partition
    except TopicError:
        code = ErrorCode.invalid_topic_exception
    return make(
        mod.DescribeTopicPartitionsResponseTopic,
        error_code=code,
        name=name,
        topic_id=None,
        is_internal=name in INTERNAL_TOPICS,
        partitions=(),
    )


def _invalid(mod: Any, request: Any) -> Any:
    """Kafka's error response for an InvalidRequestException: every named topic INVALID_REQUEST."""
    topics = tuple(
        make(
            mod.DescribeTopicPartitionsResponseTopic,
            error_code=ErrorCode.invalid_request,
            name=t.name,
            topic_id=None,
            partitions=(),
        )
        for t in request.topics
    )
    return make(mod.DescribeTopicPartitionsResponse, throttle_time=NO_THROTTLE, topics=topics, next_cursor=None)


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    registry = ctx.broker.topics
    cursor = request.cursor
    start_name = "" if cursor is None else cursor.topic_name
    every = not request.topics
    if every:
        names = sorted(t.name for t in registry.all() if t.name >= start_name)
    else:
        names = sorted({t.name for t in request.topics if t.name >= start_name})
        if cursor is not None and cursor.topic_name not in names:
            return _invalid(mod, request)
    if cursor is not None and cursor.partition_index < 0:
        return _invalid(mod, request)
    remaining = max(min(int(request.response_partition_limit), MAX_PARTITION_LIMIT), 1)
    topics: list[Any] = []
    next_cursor = None
    for name in names:
        record = registry.get(name)
        if remaining == 0:
            next_cursor = make(mod.Cursor, topic_name=name, partition_index=0)
            break
        if not ctx.allowed(AclOperation.DESCRIBE, ResourceType.TOPIC, name):
            if not every:
                topics.append(_missing(mod, name, ErrorCode.topic_authorization_failed))
            continue
        if record is None:
            if not every:
                topics.append(_missing(mod, name))
            continue
        first = int(cursor.partition_index) if cursor is not None and name == cursor.topic_name else 0
        end = min(record.partitions, first + remaining)
        parts = tuple(_partition(ctx, mod, record, i) for i in range(first, end))
        topics.append(
            make(
                mod.DescribeTopicPartitionsResponseTopic,
                error_code=ErrorCode.none,
                name=name,
                topic_id=uuid.UUID(record.topic_id),
                is_internal=name in INTERNAL_TOPICS,
                partitions=parts,
            )
        )
        if end < record.partitions:
            next_cursor = make(mod.Cursor, topic_name=name, partition_index=end)
            break
        remaining -= len(parts)
    return make(
        mod.DescribeTopicPartitionsResponse, throttle_time=NO_THROTTLE, topics=tuple(topics), next_cursor=next_cursor
    )
