"""Metadata (3): live brokers, the controller, topics with ids, partitions led by their owners.

kio serializes in pure Python, so whole response bodies are cached until any topic or epoch changes.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.topics import INTERNAL_TOPICS
from metadata.models import TopicRecord

API_KEY = 3
MIN_VERSION = 0
MAX_VERSION = 12
_CACHE_ENTRIES = 64
_cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()


async def handle(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    version = ctx.api_version
    requested = request.topics
    if version == 0 and requested is not None and len(requested) == 0:
        requested = None  # v0: an empty list means all topics
    names: list[str] | None = None
    ids: list[uuid.UUID | None] = []
    if requested is not None:
        names = [t.name for t in requested if t.name is not None]
        ids = [getattr(t, "topic_id", None) for t in requested if t.name is None]
    auto = broker.config.auto_create_topics and getattr(request, "allow_auto_topic_creation", True)
    if names and auto:
        for name in names:
            if broker.topics.get(name) is None:
                await broker.topic_for_produce_or_fetch(name)
    for topic in broker.topics.all() if names is None else filter(None, map(broker.topics.get, names)):
        await broker.ensure_loaded(topic)
    key = (version, None if names is None else tuple(names), tuple(ids), broker.topics.generation,
           broker.logs.generation)
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    body = _encode(ctx, _build(ctx, names, ids))
    _cache[key] = body
    while len(_cache) > _CACHE_ENTRIES:
        _cache.popitem(last=False)
    return body


def _encode(ctx: RequestContext, response: Any) -> bytes:
    from brokers.server import encode_body

    return encode_body(response)


def _build(ctx: RequestContext, names: list[str] | None, ids: list[uuid.UUID | None]) -> Any:
    broker = ctx.broker
    mod = response_module(API_KEY, ctx.api_version)
    node = broker.config.node_id
    host, port = broker.config.advertised
    topics: list[Any] = []
    if names is None:
        chosen: list[tuple[str | None, uuid.UUID | None, TopicRecord | None]] = [
            (t.name, None, t) for t in broker.topics.all()
        ]
    else:
        chosen = [(n, None, broker.topics.get(n)) for n in names]
        chosen += [(None, i, broker.topics.by_id(str(i)) if i else None) for i in ids]
    for name, topic_id, topic in chosen:
        if topic is None:
            topics.append(
                make(
                    mod.MetadataResponseTopic,
                    error_code=ErrorCode.unknown_topic_id if name is None else ErrorCode.unknown_topic_or_partition,
                    name=name if name is not None else None,
                    topic_id=topic_id or uuid.UUID(int=0),
                    is_internal=False,
                    partitions=(),
                )
            )
            continue
        partitions = []
        for p in range(topic.partitions):
            plog = broker.logs.loaded(topic.topic_id, p)
            partitions.append(
                make(
                    mod.MetadataResponsePartition,
                    error_code=ErrorCode.none,
                    partition_index=p,
                    leader_id=node,
                    leader_epoch=plog.epoch if plog is not None else -1,
                    replica_nodes=(node,),
                    isr_nodes=(node,),
                    offline_replicas=(),
                )
            )
        topics.append(
            make(
                mod.MetadataResponseTopic,
                error_code=ErrorCode.none,
                name=topic.name,
                topic_id=uuid.UUID(topic.topic_id),
                is_internal=topic.name in INTERNAL_TOPICS,
                partitions=tuple(partitions),
                topic_authorized_operations=-2147483648,
            )
        )
    return make(
        mod.MetadataResponse,
        throttle_time=NO_THROTTLE,
        brokers=(make(mod.MetadataResponseBroker, node_id=node, host=host, port=port, rack=None),),
        cluster_id=broker.cluster_id,
        controller_id=node,
        topics=tuple(topics),
    )
