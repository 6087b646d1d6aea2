"""Consumer-group administration over the Kafka protocol: what kafka-consumer-groups' admin client does
(list, describe, committed offsets, log offsets, delete).

Every call goes through :class:`brokers.cli.client.KafkaClient` to the group's coordinator (ListGroups to
every broker), so it works against any Kafka-compatible cluster, not only Tidelog.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from brokers.cli.client import (
    COORDINATOR_MOVED,
    LIST_OFFSETS,
    Connection,
    KafkaClient,
    KafkaError,
    Node,
    error_name,
    request_module,
)
from brokers.handlers.base import make

OFFSET_COMMIT, OFFSET_FETCH, LIST_GROUPS, DESCRIBE_GROUPS, DELETE_GROUPS = 8, 9, 16, 15, 42
CONSUMER_GROUP_DESCRIBE = 69
DEAD, EMPTY = "Dead", "Empty"
TP = tuple[str, int]
EARLIEST, LATEST = -2, -1  # ListOffsets timestamps: log start, log end
_LEADER_MOVED = frozenset(
    {ErrorCode.not_leader_or_follower, ErrorCode.leader_not_available, ErrorCode.unknown_topic_or_partition}
)
_VERSION = struct.Struct(">h")


@dataclass(frozen=True, slots=True)
class GroupListing:
    """One row of ListGroups."""

    group_id: str
    state: str
    group_type: str
    protocol_type: str


@dataclass(frozen=True, slots=True)
class MemberDescription:
    """A group member; ``epoch`` is the KIP-848 member epoch (None for classic members)."""

    member_id: str
    instance_id: str | None
    client_id: str
    host: str
    assignment: tuple[TP, ...]
    epoch: int | None = None


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A group as its coordinator describes it. ``epoch`` is the KIP-848 group epoch; classic groups'
    DescribeGroups carries no generation, so it is None for them."""

    group_id: str
    group_type: str  # "classic" or "consumer"
    state: str
    protocol_type: str
    protocol: str  # the classic protocol (assignor) chosen, or the KIP-848 server-side assignor
    epoch: int | None
    assignment_epoch: int | None
    coordinator: Node
    members: tuple[MemberDescription, ...]

    @property
    def exists(self) -> bool:
        return self.state != DEAD


def decode_assignment(data: bytes) -> tuple[TP, ...]:
    """The partitions in a classic consumer-protocol assignment (ConsumerProtocolAssignment, any version).

    Newer versions only append fields, so they are read with the newest schema kio has."""
    if len(data) < _VERSION.size:
        return ()
    (version,) = _VERSION.unpack_from(data, 0)
    if version < 0:
        raise ValueError(f"assignment version {version}")
    mod = importlib.import_module(f"kio.schema.consumer_protocol_assignment.v{min(version, 3)}")
    assignment, _ = entity_reader(mod.ConsumerProtocolAssignment)(data, _VERSION.size)
    return tuple(sorted((tp.topic, int(p)) for tp in assignment.assigned_partitions for p in tp.partitions))


# --------------------------------------------------------------------------- list


async def list_groups(
    client: KafkaClient, states: Sequence[str] = (), types: Sequence[str] = ()
) -> list[GroupListing]:
    """ListGroups from every broker, merged; filtered by state and type (by the broker where it can,
    and here as well, so older brokers give the same answer)."""
    await client.metadata([])
    found: dict[str, GroupListing] = {}
    for node in sorted(client.nodes.values(), key=lambda n: n.node_id):
        conn = await client.connect(node.host, node.port)
        resp = await _list_groups_at(client, conn, states, types)
        for g in resp.groups:
            found[g.group_id] = GroupListing(
                g.group_id, getattr(g, "group_state", ""), getattr(g, "group_type", ""), g.protocol_type
            )
    want_states = {s.lower() for s in states}
    want_types = {t.lower() for t in types}
    kept = [
        g for g in found.values()
        if (not want_states or g.state.lower() in want_states)
        and (not want_types or g.group_type.lower() in want_types)
    ]
    return sorted(kept, key=lambda g: g.group_id)


async def _list_groups_at(client: KafkaClient, conn: Connection, states: Sequence[str], types: Sequence[str]) -> Any:
    version = conn.version(LIST_GROUPS, 0, 5)
    if states and version < 4:
        raise KafkaError(ErrorCode.unsupported_version, f"{conn.address} cannot filter groups by state (ListGroups v4)")
    mod = request_module(LIST_GROUPS, version)
    request = make(mod.ListGroupsRequest, states_filter=tuple(states), types_filter=tuple(types))
    deadline = time.monotonic() + client.timeout
    while True:  # COORDINATOR_LOAD_IN_PROGRESS: the broker is still loading its groups
        resp = await conn.send(request)
        if resp.error_code == ErrorCode.none:
            return resp
        if resp.error_code not in COORDINATOR_MOVED:
            raise KafkaError(resp.error_code, f"ListGroups on {conn.address}: {error_name(resp.error_code)}")
        if time.monotonic() > deadline:
            raise KafkaError(resp.error_code, f"ListGroups on {conn.address}: still {error_name(resp.error_code)}")
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- describe


async def describe_group(client: KafkaClient, group_id: str) -> GroupDescription:
    """ConsumerGroupDescribe for a KIP-848 group, DescribeGroups for a classic one (state Dead: no group)."""
    coordinator = (await client.find_coordinators([group_id]))[group_id]
    conn = await client.coordinator(group_id)
    if conn.supports(CONSUMER_GROUP_DESCRIBE):
        found = await client.group_call(group_id, lambda c: _consumer_group_describe(c, group_id, coordinator))
        if found is not None:
            return found
    return await client.group_call(group_id, lambda c: _describe_classic(c, group_id, coordinator))


async def _consumer_group_describe(
    conn: Connection, group_id: str, coordinator: Node
) -> tuple[GroupDescription | None, ErrorCode]:
    mod = conn.module(CONSUMER_GROUP_DESCRIBE, 0, 1)
    resp = await conn.send(mod.ConsumerGroupDescribeRequest(group_ids=(group_id,), include_authorized_operations=False))
    g = resp.groups[0]
    if g.error_code in COORDINATOR_MOVED:
        return None, g.error_code
    if g.error_code != ErrorCode.none:
        return None, ErrorCode.none  # GROUP_ID_NOT_FOUND: not a KIP-848 group (or no group): ask DescribeGroups
    members = tuple(
        MemberDescription(
            m.member_id, m.instance_id, m.client_id, m.client_host,
            tuple(sorted((t.topic_name, int(p)) for t in m.assignment.topic_partitions for p in t.partitions)),
            int(m.member_epoch),
        )
        for m in g.members
    )
    desc = GroupDescription(
        group_id, "consumer", g.group_state, "consumer", g.assignor_name, int(g.group_epoch),
        int(g.assignment_epoch), coordinator, members,
    )
    return desc, ErrorCode.none


async def _describe_classic(conn: Connection, group_id: str, coordinator: Node) -> tuple[GroupDescription, ErrorCode]:
    mod = conn.module(DESCRIBE_GROUPS, 0, 6)
    resp = await conn.send(make(mod.DescribeGroupsRequest, groups=(group_id,), include_authorized_operations=False))
    g = resp.groups[0]
    if g.error_code in COORDINATOR_MOVED:
        return _dead(group_id, coordinator), g.error_code
    if g.error_code == ErrorCode.group_id_not_found:
        return _dead(group_id, coordinator), ErrorCode.none
    if g.error_code != ErrorCode.none:
        detail = getattr(g, "error_message", None)
        raise KafkaError(
            g.error_code, f"DescribeGroups {group_id!r}: {error_name(g.error_code)}{': ' + detail if detail else ''}"
        )
    members = []
    for m in g.members:
        assignment: tuple[TP, ...] = ()
        if g.protocol_type == "consumer":
            try:
                assignment = decode_assignment(m.member_assignment)
            except Exception:  # a client's malformed assignment: show the member without it
                assignment = ()
        members.append(MemberDescription(m.member_id, m.group_instance_id, m.client_id, m.client_host, assignment))
    desc = GroupDescription(
        group_id, "classic", g.group_state, g.protocol_type, g.protocol_data, None, None, coordinator, tuple(members)
    )
    return desc, ErrorCode.none


def _dead(group_id: str, coordinator: Node) -> GroupDescription:
    return GroupDescription(group_id, "classic", DEAD, "", "", None, None, coordinator, ())


# --------------------------------------------------------------------------- offsets


async def fetch_offsets(
    client: KafkaClient, group_id: str, partitions: Mapping[str, Sequence[int]] | None = None
) -> dict[TP, int]:
    """The group's committed offsets: (topic, partition) -> offset; every one, or those of ``partitions``
    (topic -> partitions: clusters that cannot list "all", like librdkafka's mock, answer this)."""
    return await client.group_call(group_id, lambda c: _offset_fetch(c, group_id, partitions))


async def _offset_fetch(
    conn: Connection, group_id: str, partitions: Mapping[str, Sequence[int]] | None = None
) -> tuple[dict[TP, int], ErrorCode]:
    version = conn.version(OFFSET_FETCH, 2, 9)
    mod = request_module(OFFSET_FETCH, version)
    if version >= 8:
        wanted = None if partitions is None else tuple(
            make(mod.OffsetFetchRequestTopics, name=t, partition_indexes=tuple(ps)) for t, ps in partitions.items()
        )
        resp = await conn.send(
            mod.OffsetFetchRequest(groups=(make(mod.OffsetFetchRequestGroup, group_id=group_id, topics=wanted),))
        )
        code, topics = resp.groups[0].error_code, resp.groups[0].topics
    else:
        wanted = None if partitions is None else tuple(
            make(mod.OffsetFetchRequestTopic, name=t, partition_indexes=tuple(ps)) for t, ps in partitions.items()
        )
        resp = await conn.send(make(mod.OffsetFetchRequest, group_id=group_id, topics=wanted, require_stable=False))
        code, topics = resp.error_code, resp.topics
    if code in COORDINATOR_MOVED:
        return {}, code
    if code == ErrorCode.group_id_not_found:
        return {}, ErrorCode.none
    if code != ErrorCode.none:
        raise KafkaError(code, f"OffsetFetch {group_id!r}: {error_name(code)}")
    out: dict[TP, int] = {}
    for t in topics or ():  # null: librdkafka's mock answers "all topics" with no array
        for p in t.partitions:
            if p.error_code in COORDINATOR_MOVED:
                return {}, p.error_code
            if p.error_code == ErrorCode.none and p.committed_offset >= 0:
                out[(t.name, int(p.partition_index))] = int(p.committed_offset)
    return out, ErrorCode.none


async def commit_offsets(
    client: KafkaClient, group_id: str, offsets: Mapping[TP, int], *, generation: int = -1, member_id: str = ""
) -> dict[TP, ErrorCode]:
    """OffsetCommit (generation -1 and no member: an admin commit, allowed while the group is empty);
    returns each partition's error code."""
    return await client.group_call(group_id, lambda c: _offset_commit(c, group_id, offsets, generation, member_id))


async def _offset_commit(
    conn: Connection, group_id: str, offsets: Mapping[TP, int], generation: int, member_id: str
) -> tuple[dict[TP, ErrorCode], ErrorCode]:
    mod = conn.module(OFFSET_COMMIT, 2, 9)
    by_topic: dict[str, list[Any]] = {}
    for (topic, p), offset in sorted(offsets.items()):
        by_topic.setdefault(topic, []).append(
            make(mod.OffsetCommitRequestPartition, partition_index=p, committed_offset=offset,
                 committed_leader_epoch=-1, committed_metadata="", commit_timestamp=-1)
        )
    topics = tuple(make(mod.OffsetCommitRequestTopic, name=t, partitions=tuple(ps)) for t, ps in by_topic.items())
    resp = await conn.send(
        make(mod.OffsetCommitRequest, group_id=group_id, generation_id_or_member_epoch=generation,
             member_id=member_id, group_instance_id=None, topics=topics)
    )
    out = {(t.name, int(p.partition_index)): p.error_code for t in resp.topics for p in t.partitions}
    moved = next((c for c in out.values() if c in COORDINATOR_MOVED), ErrorCode.none)
    return out, moved


# --------------------------------------------------------------------------- log offsets


async def list_offsets(
    client: KafkaClient, partitions: Mapping[TP, int], *, isolation_level: int = 0
) -> dict[TP, int]:
    """ListOffsets at each partition's leader: (topic, partition) -> timestamp (EARLIEST, LATEST or ms)
    becomes -> offset (-1 where no record has such a timestamp). Retries while leadership moves."""
    todo = dict(partitions)
    out: dict[TP, int] = {}
    deadline = time.monotonic() + client.timeout
    delay = 0.05
    while todo:
        leaders = await client.partitions(t for t, _ in todo)
        by_leader: dict[int, list[TP]] = {}
        failed: dict[TP, ErrorCode] = {}
        for tp in todo:
            leader = leaders.get(tp[0], {}).get(tp[1])
            if leader is None:
                raise KafkaError(ErrorCode.unknown_topic_or_partition, f"{tp[0]}:{tp[1]} does not exist")
            if leader < 0:
                failed[tp] = ErrorCode.leader_not_available
            else:
                by_leader.setdefault(leader, []).append(tp)
        for leader, tps in by_leader.items():
            got = await _list_offsets_at(client, leader, {tp: todo[tp] for tp in tps}, isolation_level)
            for tp, (code, offset) in got.items():
                if code == ErrorCode.none:
                    out[tp] = offset
                    del todo[tp]
                elif code in _LEADER_MOVED:
                    failed[tp] = code
                else:
                    raise KafkaError(code, f"ListOffsets {tp[0]}:{tp[1]}: {error_name(code)}")
        if todo:
            if time.monotonic() + delay > deadline:
                tp, code = next(iter(failed.items()))
                raise KafkaError(code, f"ListOffsets {tp[0]}:{tp[1]}: still {error_name(code)}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    return out


async def _list_offsets_at(
    client: KafkaClient, leader: int, wanted: Mapping[TP, int], isolation_level: int
) -> dict[TP, tuple[ErrorCode, int]]:
    conn = await client.node(leader)
    mod = conn.module(LIST_OFFSETS, 1, 9)
    by_topic: dict[str, list[Any]] = {}
    for (topic, p), ts in wanted.items():
        by_topic.setdefault(topic, []).append(
            make(mod.ListOffsetsPartition, partition_index=p, timestamp=ts, current_leader_epoch=-1)
        )
    resp = await conn.send(
        make(mod.ListOffsetsRequest, replica_id=-1, isolation_level=isolation_level,
             topics=tuple(make(mod.ListOffsetsTopic, name=t, partitions=tuple(ps)) for t, ps in by_topic.items()))
    )
    return {
        (t.name, int(p.partition_index)): (p.error_code, int(p.offset)) for t in resp.topics for p in t.partitions
    }


# --------------------------------------------------------------------------- delete


async def delete_groups(client: KafkaClient, group_ids: Iterable[str]) -> dict[str, ErrorCode]:
    """DeleteGroups at each group's coordinator; the error code per group (NONE when deleted)."""
    return {g: await client.group_call(g, functools.partial(_delete_at, group_id=g)) for g in dict.fromkeys(group_ids)}


async def _delete_at(conn: Connection, group_id: str) -> tuple[ErrorCode, ErrorCode]:
    mod = conn.module(DELETE_GROUPS, 0, 2)
    resp = await conn.send(mod.DeleteGroupsRequest(groups_names=(group_id,)))
    code = next((r.error_code for r in resp.results if r.group_id == group_id), ErrorCode.unknown_server_error)
    return code, code
