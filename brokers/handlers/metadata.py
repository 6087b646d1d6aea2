"""Metadata (3): live brokers, the controller, topics with ids, partitions led by their owners.

Answering Metadata loads nothing: a partition's log is loaded when it is first produced to or read, so the
leader epoch of a partition not loaded yet is reported as -1 (unknown; clients then skip epoch checks).

The answer is encoded here with ``struct`` rather than built as kio objects: kio encodes in pure Python at
about 20 µs a partition (2 s for 100,000), and every partition loaded changes an epoch. Each topic's
encoded bytes are cached until that topic or one of its loaded logs changes, and whole bodies until any
topic or log does, so an answer for many partitions is mostly a join of cached bytes.
tests/unit/test_metadata_response.py checks the bytes against kio's encoder for every version.
"""

from __future__ import annotations

import struct
import uuid
from collections import OrderedDict
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import RequestContext
from brokers.topics import INTERNAL_TOPICS, TopicError
from metadata.models import TopicRecord

API_KEY = 3
MIN_VERSION = 0
MAX_VERSION = 12
FLEXIBLE_FROM = 9
_CACHE_ENTRIES = 16
_TOPIC_CACHE_ENTRIES = 100_000
_NO_AUTHORIZED_OPERATIONS = -(2**31)
_cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
_topic_cache: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], bytes]] = OrderedDict()
"""(version, topic id, broker) -> (what the bytes were made from, the topic's encoded bytes)."""
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


async def handle(ctx: RequestContext, request: Any) -> bytes:
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
    refused: dict[str, TopicError] = {}
    auto = broker.config.auto_create_topics and getattr(request, "allow_auto_topic_creation", True)
    if names and auto:
        for name in names:
            if broker.topics.get(name) is None:
                try:
                    await broker.auto_create_topic(name)
                except TopicError as e:  # a limit or an illegal name: the client sees the refusal's code
                    refused[name] = e
    key = (version, None if names is None else tuple(names), tuple(ids), broker.topics.generation,
           broker.logs.generation, broker.config.node_id, broker.logs.instance)
    cached = _cache.get(key) if not refused else None
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    body = _encode(ctx, names, ids, refused)
    if not refused:
        _cache[key] = body
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return body


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(s: str | None, flexible: bool) -> bytes:
    if s is None:
        return b"\x00" if flexible else b"\xff\xff"
    raw = s.encode()
    return (_uvarint(len(raw) + 1) if flexible else _I16.pack(len(raw))) + raw


def _count(n: int, flexible: bool) -> bytes:
    return _uvarint(n + 1) if flexible else _I32.pack(n)


def _encode(
    ctx: RequestContext, names: list[str] | None, ids: list[uuid.UUID | None], refused: dict[str, TopicError]
) -> bytes:
    """The whole response body for this version."""
    broker = ctx.broker
    version = ctx.api_version
    flexible = version >= FLEXIBLE_FROM
    tags = b"\x00" if flexible else b""
    node = broker.config.node_id
    host, port = broker.config.advertised
    out: list[bytes] = []
    if version >= 3:
        out.append(_I32.pack(0))  # throttle_time_ms
    out.append(_count(1, flexible))
    out.append(_I32.pack(node) + _string(host, flexible) + _I32.pack(port))
    if version >= 1:
        out.append(_string(None, flexible))  # rack
    out.append(tags)
    if version >= 2:
        out.append(_string(broker.cluster_id, flexible))
    if version >= 1:
        out.append(_I32.pack(node))  # controller
    chosen: list[tuple[str | None, uuid.UUID | None, TopicRecord | None]]
    if names is None:
        chosen = [(t.name, None, t) for t in broker.topics.all()]
    else:
        chosen = [(n, None, broker.topics.get(n)) for n in names]
        chosen += [(None, i, broker.topics.by_id(str(i)) if i else None) for i in ids]
    out.append(_count(len(chosen), flexible))
    for name, topic_id, topic in chosen:
        if topic is None:
            error = ErrorCode.unknown_topic_id if name is None else ErrorCode.unknown_topic_or_partition
            if name is not None and name in refused:
                error = refused[name].code
            out.append(_missing_topic(version, error, name, topic_id))
        else:
            out.append(_topic(ctx, topic))
    if 8 <= version <= 10:
        out.append(_I32.pack(_NO_AUTHORIZED_OPERATIONS))  # cluster_authorized_operations
    out.append(tags)
    return b"".join(out)


def _missing_topic(version: int, error: ErrorCode, name: str | None, topic_id: uuid.UUID | None) -> bytes:
    flexible = version >= FLEXIBLE_FROM
    if name is None and version < 12:
        name = ""  # a topic asked for by id; its name is nullable from v12 only
    parts = [_I16.pack(error.value), _string(name, flexible)]
    if version >= 10:
        parts.append((topic_id or uuid.UUID(int=0)).bytes)
    if version >= 1:
        parts.append(b"\x00")  # is_internal
    parts.append(_count(0, flexible))
    if version >= 8:
        parts.append(_I32.pack(_NO_AUTHORIZED_OPERATIONS))
    if flexible:
        parts.append(b"\x00")
    return b"".join(parts)


def _topic(ctx: RequestContext, topic: TopicRecord) -> bytes:
    """One topic's encoded bytes, cached until the topic or one of its loaded logs changes."""
    broker = ctx.broker
    version = ctx.api_version
    node = broker.config.node_id
    key = (version, topic.topic_id, broker.logs.instance)
    stamp = (topic.name, topic.partitions, node, broker.logs.topic_generation(topic.topic_id))
    found = _topic_cache.get(key)
    if found is not None and found[0] == stamp:
        _topic_cache.move_to_end(key)
        return found[1]
    flexible = version >= FLEXIBLE_FROM
    parts = [_I16.pack(0), _string(topic.name, flexible)]
    if version >= 10:
        parts.append(uuid.UUID(topic.topic_id).bytes)
    if version >= 1:
        parts.append(b"\x01" if topic.name in INTERNAL_TOPICS else b"\x00")
    parts.append(_count(topic.partitions, flexible))
    # After the leader epoch every partition is the same: replicas [node], isr [node], offline [], tags.
    nodes = _count(1, flexible) + _I32.pack(node)
    suffix = nodes + nodes + (_count(0, flexible) if version >= 5 else b"") + (b"\x00" if flexible else b"")
    loaded = broker.logs.loaded
    if version >= 7:
        head = struct.Struct(">hiii")
        for p in range(topic.partitions):
            plog = loaded(topic.topic_id, p)
            parts.append(head.pack(0, p, node, -1 if plog is None else plog.epoch) + suffix)
    else:
        head = struct.Struct(">hii")
        parts.extend(head.pack(0, p, node) + suffix for p in range(topic.partitions))
    if version >= 8:
        parts.append(_I32.pack(_NO_AUTHORIZED_OPERATIONS))
    if flexible:
        parts.append(b"\x00")
    encoded = b"".join(parts)
    _topic_cache[key] = (stamp, encoded)
    _topic_cache.move_to_end(key)
    while len(_topic_cache) > _TOPIC_CACHE_ENTRIES:
        _topic_cache.popitem(last=False)
    return encoded
