"""DeleteTopics (API 20): delete topics by name, or (v6) by topic id; ledgers go in the background."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType
from brokers.topics import TopicError
from metadata.api import MetadataError
from metadata.models import TopicRecord

API_KEY = 20
MIN_VERSION = 1
MAX_VERSION = 6

Wanted = tuple[str | None, uuid.UUID | None]


def _wanted(ctx: RequestContext, request: Any) -> list[Wanted]:
    """(name, topic id) per requested topic; a zero id arrives from kio as None."""
    if ctx.api_version >= 6:
        return [(t.name, t.topic_id) for t in request.topics]
    return [(name, None) for name in request.topic_names]


async def _delete(ctx: RequestContext, name: str | None, topic_id: uuid.UUID | None) -> TopicRecord:
    """Delete one topic; raises TopicError with the Kafka error to report."""
    if name is not None and topic_id is not None:
        raise TopicError(ErrorCode.invalid_request, "You may not specify both topic name and topic id.")
    if topic_id is not None:
        found = ctx.broker.topics.by_id(str(topic_id))
        if found is None:
            raise TopicError(ErrorCode.unknown_topic_id, f"Topic id {topic_id} does not exist.")
        name = found.name
    if name is None:
        raise TopicError(ErrorCode.invalid_request, "Neither topic name nor topic id was given.")
    if not ctx.allowed(AclOperation.DELETE, ResourceType.TOPIC, name):
        raise TopicError(ErrorCode.topic_authorization_failed, f"Not authorized to delete topic {name}.")
    if ctx.broker.topics.get(name) is None:
        raise TopicError(ErrorCode.unknown_topic_or_partition, f"Topic '{name}' does not exist.")
    return await ctx.broker.delete_topic(name)


async def handle(ctx: RequestContext, request: Any) -> Any:
    """Delete each requested topic; a name or id given twice is refused (once) with INVALID_REQUEST."""
    mod = response_module(API_KEY, ctx.api_version)
    wanted = _wanted(ctx, request)
    names = Counter(n for n, _ in wanted if n is not None)
    ids = Counter(i for _, i in wanted if i is not None)
    seen: set[Wanted] = set()
    results = []
    for name, topic_id in wanted:
        if (name, topic_id) in seen:
            continue
        seen.add((name, topic_id))
        code, message = ErrorCode.none, None
        if name is not None and names[name] > 1:
            code, message = ErrorCode.invalid_request, "Duplicate topic name."
        elif topic_id is not None and ids[topic_id] > 1:
            code, message = ErrorCode.invalid_request, "Duplicate topic id."
        else:
            try:
                deleted = await _delete(ctx, name, topic_id)
            except TopicError as e:
                code, message = e.code, str(e)
            except MetadataError as e:
                code, message = ErrorCode.unknown_server_error, f"metadata store: {e}"
            else:
                name, topic_id = deleted.name, uuid.UUID(deleted.topic_id)
        results.append(
            make(mod.DeletableTopicResult, name=name, topic_id=topic_id, error_code=code, error_message=message)
        )
    return make(mod.DeleteTopicsResponse, throttle_time=NO_THROTTLE, responses=tuple(results))
