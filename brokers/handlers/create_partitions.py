"""CreatePartitions (API 37): grow topics; new partitions start empty, owned wherever placement puts them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType
from brokers.topics import TopicError
from metadata.api import MetadataError

API_KEY = 37
MIN_VERSION = 0
MAX_VERSION = 3


async def _grow(ctx: RequestContext, topic: Any, validate_only: bool) -> None:
    """Grow (or validate growing) one topic; raises TopicError."""
    current = ctx.broker.topics.get(topic.name)
    if current is None:
        raise TopicError(ErrorCode.unknown_topic_or_partition, f"The topic '{topic.name}' does not exist.")
    if topic.count <= current.partitions:
        raise TopicError(
            ErrorCode.invalid_partitions,
            f"Topic currently has {current.partitions} partitions, "
            f"which is {'the same as' if topic.count == current.partitions else 'higher than'} "
            f"the requested {topic.count}.",
        )
    if topic.assignments is not None:
        added = topic.count - current.partitions
        if len(topic.assignments) != added:
            raise TopicError(
                ErrorCode.invalid_replica_assignment,
                f"Increasing the number of partitions by {added} but {len(topic.assignments)} "
                "assignments provided.",
            )
        if any(not a.broker_ids for a in topic.assignments):
            raise TopicError(ErrorCode.invalid_replica_assignment, "A partition assignment has no brokers.")
    await ctx.broker.topics.add_partitions(topic.name, int(topic.count), validate_only)


async def handle(ctx: RequestContext, request: Any) -> Any:
    """Grow each requested topic; a name given twice is refused (once) with INVALID_REQUEST."""
    mod = response_module(API_KEY, ctx.api_version)
    counts = Counter(t.name for t in request.topics)
    seen: set[str] = set()
    results = []
    for topic in request.topics:
        if topic.name in seen:
            continue
        seen.add(topic.name)
        code, message = ErrorCode.none, None
        if counts[topic.name] > 1:
            code, message = ErrorCode.invalid_request, "Duplicate topic name."
        else:
            try:
                if not ctx.allowed(AclOperation.ALTER, ResourceType.TOPIC, topic.name):
                    raise TopicError(ErrorCode.topic_authorization_failed, f"Not authorized to alter {topic.name}.")
                await _grow(ctx, topic, bool(request.validate_only))
            except TopicError as e:
                code, message = e.code, str(e)
            except MetadataError as e:
                code, message = ErrorCode.unknown_server_error, f"metadata store: {e}"
        results.append(
            make(mod.CreatePartitionsTopicResult, name=topic.name, error_code=code, error_message=message)
        )
    return make(mod.CreatePartitionsResponse, throttle_time=NO_THROTTLE, results=tuple(results))
