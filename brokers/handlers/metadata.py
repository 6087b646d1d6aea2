"""Metadata (3): live brokers, the controller, topics with ids, partitions led by their owners.

Brokers, the controller and each partition's leader and leader epoch come from ``broker.routing``: the
embedded broker names itself everywhere and reports the epoch of a partition whose log is not loaded yet as
-1 (unknown; clients then skip epoch checks) — answering Metadata loads nothing. A partition no broker owns
has leader -1, LEADER_NOT_AVAILABLE and no replicas. Replicas and ISR are ``[owner]``: redundancy is the
bookie quorum's, not brokers'.

The answer is encoded here with ``struct`` rather than built as kio objects: kio encodes in pure Python at
about 20 µs a partition (2 s for 100,000), and every partition loaded changes an epoch. Each topic's
encoded bytes are cached until that topic, one of its loaded logs or the routing generation changes, and
whole bodies until any topic, log or routing does, so an answer for many partitions is mostly a join of
cached bytes.
tests/unit/test_metadata_response.py checks the bytes against kio's encoder for every version.

A missing topic whose name is illegal (Kafka's rules, brokers/topics.py) is answered INVALID_TOPIC_EXCEPTION
whether or not auto-creation is on, as Kafka does; with auto-creation, so is one whose name collides with an
existing topic ('.' versus '_'; Kafka's auto-creation would answer LEADER_NOT_AVAILABLE and fail later).
Nothing is created, and clients fail the send at once instead of retrying until a timeout.

Brokers are advertised at the listener the request came in on (``advertised.listeners``; each cluster broker
registers all of its listeners); a broker without a listener of that name, at its first address.

A v10/v11 request naming a topic by id (null name, or a topic id) gets Kafka's error response for an
InvalidRequestException (every topic INVALID_REQUEST): topic ids in Metadata requests exist from v12.
"""

from __future__ import annotations

import struct
import uuid
from collections import OrderedDict
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import RequestContext
from brokers.routing import NO_LEADER
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from brokers.security.authorizer import INT32_MIN
from brokers.topics import INTERNAL_TOPICS, TopicError, check_name
from metadata.models import TopicRecord

API_KEY = 3
MIN_VERSION = 0
MAX_VERSION = 12
FLEXIBLE_FROM = 9
_CACHE_ENTRIES = 16
_TOPIC_CACHE_ENTRIES = 100_000
_NO_AUTHORIZED_OPERATIONS = INT32_MIN
_cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
_topic_cache: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], bytes]] = OrderedDict()
"""(version, topic id, broker) -> (what the bytes were made from, the topic's encoded bytes)."""
_LEADER_NOT_AVAILABLE = int(ErrorCode.leader_not_available.value)
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


async def handle(ctx: RequestContext, request: Any) -> bytes:
    broker = ctx.broker
    version = ctx.api_version
    requested = request.topics
    if version == 0 and requested is not None and len(requested) == 0:
        requested = None  # v0: an empty list means all topics
    if requested is not None and 10 <= version < 12 and any(_by_id(t) for t in requested):
        return _invalid_request(version, requested)
    names: list[str] | None = None
    ids: list[uuid.UUID | None] = []
    if requested is not None:
        names = [t.name for t in requested if t.name is not None]
        ids = [getattr(t, "topic_id", None) for t in requested if t.name is None]
    refused: dict[str, TopicError] = {}
    auto = broker.config.auto_create_topics and getattr(request, "allow_auto_topic_creation", True)
    checked = broker.authorizer.enabled
    for name in names or ():
        if checked and (problem := _denied(ctx, name, auto)) is not None:
            refused[name] = problem
        elif broker.topics.get(name) is None:
            try:
                if auto:
                    await broker.auto_create_topic(name)
                else:
                    check_name(name)  # Kafka: INVALID_TOPIC_EXCEPTION for a name that can never exist
            except TopicError as e:  # a limit, an illegal or colliding name: the client sees the refusal's code
                refused[name] = e
    routing = broker.routing
    key = (version, None if names is None else tuple(names), tuple(ids), broker.topics.generation,
           broker.logs.generation, routing.node_id, routing.generation, id(routing), broker.logs.instance,
           ctx.listener)
    cached = _cache.get(key) if not refused and not checked else None
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    ops = _Ops(ctx, getattr(request, "include_topic_authorized_operations", False),
               getattr(request, "include_cluster_authorized_operations", False))
    body = _encode(ctx, names, ids, refused, ops)
    if not refused and not checked:  # answers under an authorizer depend on the principal and the ACLs
        _cache[key] = body
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return body


class _Ops:
    """Authorization while encoding: which topics the principal may see, and the authorized-operations fields."""

    def __init__(self, ctx: RequestContext, topic_ops: bool, cluster_ops: bool) -> None:
        self.ctx = ctx
        self.checked = ctx.broker.authorizer.enabled
        self.topic_ops = topic_ops
        self.cluster_ops = cluster_ops

    def visible(self, name: str) -> bool:
        return not self.checked or self.ctx.allowed(AclOperation.DESCRIBE, ResourceType.TOPIC, name)

    def of_topic(self, name: str) -> int:
        return self.ctx.operations(ResourceType.TOPIC, name) if self.topic_ops else _NO_AUTHORIZED_OPERATIONS

    def of_cluster(self) -> int:
        return self.ctx.operations(ResourceType.CLUSTER, CLUSTER_NAME) if self.cluster_ops else INT32_MIN


def _denied(ctx: RequestContext, name: str, auto: bool) -> TopicError | None:
    """TOPIC_AUTHORIZATION_FAILED for a topic asked for by name that the principal may not DESCRIBE, or that is
    missing and would be auto-created without CREATE (on the cluster or on the topic), as Kafka answers."""
    denied = TopicError(ErrorCode.topic_authorization_failed, f"Not authorized to access topic {name}.")
    if not ctx.allowed(AclOperation.DESCRIBE, ResourceType.TOPIC, name):
        return denied
    if auto and ctx.broker.topics.get(name) is None and not (
        ctx.allowed(AclOperation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME)
        or ctx.allowed(AclOperation.CREATE, ResourceType.TOPIC, name)
    ):
        return denied
    return None


def _by_id(topic: Any) -> bool:
    """A v10/v11 topic named by id: a null name or a topic id. Topic ids exist in requests from v12 only."""
    topic_id = getattr(topic, "topic_id", None)
    return topic.name is None or (topic_id is not None and topic_id.int != 0)


def _invalid_request(version: int, requested: Any) -> bytes:
    """Kafka's answer to a v10/v11 request naming a topic by id ("Topic name can not be null for version N" or
    "Topic IDs are not supported in requests for version N", InvalidRequestException): its error response,
    every topic asked for with INVALID_REQUEST, a null name as "" (the answer's names are not nullable before
    v12), no brokers, no cluster id, controller -1."""
    flexible = version >= FLEXIBLE_FROM
    out = [_I32.pack(0), _count(0, flexible), _string(None, flexible), _I32.pack(-1), _count(len(requested), flexible)]
    out += [_missing_topic(version, ErrorCode.invalid_request, t.name, getattr(t, "topic_id", None)) for t in requested]
    if version <= 10:
        out.append(_I32.pack(_NO_AUTHORIZED_OPERATIONS))  # cluster_authorized_operations
    out.append(b"\x00")  # tags
    return b"".join(out)


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
    ctx: RequestContext, names: list[str] | None, ids: list[uuid.UUID | None], refused: dict[str, TopicError],
    ops: _Ops | None = None,
) -> bytes:
    """The whole response body for this version."""
    if ops is None:
        ops = _Ops(ctx, topic_ops=False, cluster_ops=False)
    broker = ctx.broker
    version = ctx.api_version
    flexible = version >= FLEXIBLE_FROM
    tags = b"\x00" if flexible else b""
    routing = broker.routing
    out: list[bytes] = []
    if version >= 3:
        out.append(_I32.pack(0))  # throttle_time_ms
    brokers = routing.brokers()
    out.append(_count(len(brokers), flexible))
    for b in brokers:
        host, port = ctx.address(b)  # as reached through the listener the client came in on
        out.append(_I32.pack(b.node_id) + _string(host, flexible) + _I32.pack(port))
        if version >= 1:
            out.append(_string(b.rack, flexible))
        out.append(tags)
    if version >= 2:
        out.append(_string(broker.cluster_id, flexible))
    if version >= 1:
        out.append(_I32.pack(routing.controller_id()))
    chosen: list[tuple[str | None, uuid.UUID | None, TopicRecord | None]]
    if names is None:
        chosen = [(t.name, None, t) for t in broker.topics.all() if ops.visible(t.name)]
    else:
        chosen = [(n, None, broker.topics.get(n)) for n in names]
        chosen += [(None, i, broker.topics.by_id(str(i)) if i else None) for i in ids]
    out.append(_count(len(chosen), flexible))
    for name, topic_id, topic in chosen:
        denied = name in refused and refused[name].code == ErrorCode.topic_authorization_failed
        if topic is not None and name is None and not ops.visible(topic.name):
            out.append(_missing_topic(version, ErrorCode.topic_authorization_failed, None, topic_id))
        elif topic is None or denied:
            error = ErrorCode.unknown_topic_id if name is None else ErrorCode.unknown_topic_or_partition
            if name is not None and name in refused:
                error = refused[name].code
            out.append(_missing_topic(version, error, name, topic_id))
        else:
            out.append(_topic(ctx, topic, ops.of_topic(topic.name)))
    if 8 <= version <= 10:
        out.append(_I32.pack(ops.of_cluster()))  # cluster_authorized_operations
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


def _topic(ctx: RequestContext, topic: TopicRecord, authorized: int) -> bytes:
    """One topic's encoded bytes, cached until the topic, one of its loaded logs or the routing changes."""
    broker = ctx.broker
    version = ctx.api_version
    routing = broker.routing
    key = (version, topic.topic_id, broker.logs.instance)
    stamp = (topic.name, topic.partitions, routing.node_id, routing.generation, id(routing),
             broker.logs.topic_generation(topic.topic_id))
    flexible = version >= FLEXIBLE_FROM
    trailer = (_I32.pack(authorized) if version >= 8 else b"") + (b"\x00" if flexible else b"")
    found = _topic_cache.get(key)
    if found is not None and found[0] == stamp:
        _topic_cache.move_to_end(key)
        return found[1] + trailer
    parts = [_I16.pack(0), _string(topic.name, flexible)]
    if version >= 10:
        parts.append(uuid.UUID(topic.topic_id).bytes)
    if version >= 1:
        parts.append(b"\x01" if topic.name in INTERNAL_TOPICS else b"\x00")
    parts.append(_count(topic.partitions, flexible))
    # After the leader (and its epoch), a partition's bytes depend only on its owner: replicas [owner],
    # isr [owner] (both empty without one), offline [], tags — made once per owner.
    offline_tags = (_count(0, flexible) if version >= 5 else b"") + (b"\x00" if flexible else b"")
    suffixes: dict[int, bytes] = {NO_LEADER: _count(0, flexible) * 2 + offline_tags}
    head = struct.Struct(">hiii" if version >= 7 else ">hii")
    leader_of = routing.leader
    for p in range(topic.partitions):
        leader = leader_of(topic.topic_id, p)
        if leader is None:
            code, node, epoch = _LEADER_NOT_AVAILABLE, NO_LEADER, -1
        else:
            code, node, epoch = 0, leader.node_id, leader.epoch
        suffix = suffixes.get(node)
        if suffix is None:
            nodes = _count(1, flexible) + _I32.pack(node)
            suffix = suffixes[node] = nodes + nodes + offline_tags
        fixed = head.pack(code, p, node, epoch) if version >= 7 else head.pack(code, p, node)
        parts.append(fixed + suffix)
    encoded = b"".join(parts)  # cached without the trailer (authorized operations, tags)
    _topic_cache[key] = (stamp, encoded)
    _topic_cache.move_to_end(key)
    while len(_topic_cache) > _TOPIC_CACHE_ENTRIES:
        _topic_cache.popitem(last=False)
    return encoded + trailer
