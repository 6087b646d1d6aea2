"""Group-protocol requests laid out byte by byte from the Kafka protocol specification (non-flexible versions).

Independent of the broker's codec, like ``kafka_wire.py`` (whose framing it reuses): JoinGroup v5,
SyncGroup v3, Heartbeat v3, LeaveGroup v3, OffsetCommit v7, OffsetFetch v5, DescribeGroups v4,
DeleteGroups v1, OffsetDelete v0, FindCoordinator v2. One ``Member`` is one connection; a request can be
sent and its answer read later, so several members can wait on one rebalance at once.
"""

from __future__ import annotations

import itertools
import socket
import struct
from dataclasses import dataclass

from .kafka_wire import connect, nbytes, recv_frame, request, string

JOIN_GROUP, SYNC_GROUP, HEARTBEAT, LEAVE_GROUP = 11, 14, 12, 13
OFFSET_COMMIT, OFFSET_FETCH, DESCRIBE_GROUPS, DELETE_GROUPS, OFFSET_DELETE, FIND_COORDINATOR = 8, 9, 15, 42, 47, 10

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
OFFSET_METADATA_TOO_LARGE = 12
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
GROUP_ID_NOT_FOUND = 69
NON_EMPTY_GROUP = 68
GROUP_SUBSCRIBED_TO_TOPIC = 86
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(v)

    def i8(self) -> int:
        return self.take(">b")

    def i16(self) -> int:
        return self.take(">h")

    def i32(self) -> int:
        return self.take(">i")

    def i64(self) -> int:
        return self.take(">q")

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def bytes_(self) -> bytes | None:
        n = self.i32()
        if n < 0:
            return None
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b


def _array(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


def subscription(*topics: str) -> bytes:
    """A ConsumerProtocolSubscription v0: the metadata a consumer sends in JoinGroup."""
    return struct.pack(">h", 0) + _array([string(t) for t in topics]) + nbytes(b"")


@dataclass
class Joined:
    error: int
    generation: int
    protocol: str | None
    leader: str
    member_id: str
    members: list[tuple[str, str | None, bytes]]


class Member:
    """One connection acting for one group member."""

    _ids = itertools.count(1000)

    def __init__(self, bootstrap: str, group: str, instance_id: str | None = None, timeout: float = 60.0) -> None:
        self.sock: socket.socket = connect(bootstrap, timeout)
        self.group = group
        self.instance_id = instance_id
        self.member_id = ""
        self.generation = -1

    def close(self) -> None:
        self.sock.close()

    def send(self, api_key: int, version: int, body: bytes) -> int:
        cid = next(self._ids)
        self.sock.sendall(request(api_key, version, body, correlation_id=cid))
        return cid

    def recv(self, cid: int) -> Reader:
        resp = recv_frame(self.sock)
        (got,) = struct.unpack_from(">i", resp, 0)
        assert got == cid, f"response for correlation id {got}, expected {cid}"
        r = Reader(resp)
        r.pos = 4
        return r

    def call(self, api_key: int, version: int, body: bytes) -> Reader:
        return self.recv(self.send(api_key, version, body))

    # --- JoinGroup / SyncGroup / Heartbeat / LeaveGroup ------------------------------------------
    def send_join(
        self, topics: tuple[str, ...] = ("t",), session_ms: int = 10_000, protocol_type: str = "consumer",
        protocols: tuple[str, ...] = ("range",), group: str | None = None,
    ) -> int:
        body = (
            string(self.group if group is None else group) + struct.pack(">ii", session_ms, 30_000)
            + string(self.member_id) + string(self.instance_id) + string(protocol_type)
            + _array([string(p) + nbytes(subscription(*topics)) for p in protocols])
        )
        return self.send(JOIN_GROUP, 5, body)

    def recv_join(self, cid: int) -> Joined:
        r = self.recv(cid)
        r.i32()  # throttle
        error, generation = r.i16(), r.i32()
        protocol, leader, member_id = r.string(), r.string() or "", r.string() or ""
        members = []
        for _ in range(r.i32()):
            mid, iid, md = r.string() or "", r.string(), r.bytes_() or b""
            members.append((mid, iid, md))
        joined = Joined(error, generation, protocol, leader, member_id, members)
        if member_id:
            self.member_id = member_id
        if error == NONE:
            self.generation = generation
        return joined

    def join(self, **kw: object) -> Joined:
        """JoinGroup, doing the MEMBER_ID_REQUIRED handshake of v4+ when the member is new."""
        joined = self.recv_join(self.send_join(**kw))  # type: ignore[arg-type]
        if joined.error == MEMBER_ID_REQUIRED:
            joined = self.recv_join(self.send_join(**kw))  # type: ignore[arg-type]
        return joined

    def send_sync(self, assignments: dict[str, bytes] | None = None, generation: int | None = None) -> int:
        gen = self.generation if generation is None else generation
        items = [string(m) + nbytes(a) for m, a in (assignments or {}).items()]
        body = string(self.group) + struct.pack(">i", gen) + string(self.member_id) + string(self.instance_id)
        return self.send(SYNC_GROUP, 3, body + _array(items))

    def recv_sync(self, cid: int) -> tuple[int, bytes]:
        r = self.recv(cid)
        r.i32()
        return r.i16(), r.bytes_() or b""

    def sync(self, assignments: dict[str, bytes] | None = None, generation: int | None = None) -> tuple[int, bytes]:
        return self.recv_sync(self.send_sync(assignments, generation))

    def heartbeat(self, generation: int | None = None, member_id: str | None = None, group: str | None = None) -> int:
        body = (
            string(self.group if group is None else group)
            + struct.pack(">i", self.generation if generation is None else generation)
            + string(self.member_id if member_id is None else member_id) + string(self.instance_id)
        )
        r = self.call(HEARTBEAT, 3, body)
        r.i32()
        return r.i16()

    def leave(
        self, members: list[tuple[str, str | None]] | None = None, group: str | None = None
    ) -> tuple[int, list[int]]:
        who = members if members is not None else [(self.member_id, self.instance_id)]
        body = string(self.group if group is None else group) + _array([string(m) + string(i) for m, i in who])
        r = self.call(LEAVE_GROUP, 3, body)
        r.i32()
        top = r.i16()
        errors = []
        for _ in range(r.i32()):
            r.string()
            r.string()
            errors.append(r.i16())
        return top, errors

    # --- offsets -------------------------------------------------------------------------------------
    def commit(
        self, offsets: list[tuple[str, int, int, str | None]], generation: int | None = None,
        member_id: str | None = None, group: str | None = None,
    ) -> dict[tuple[str, int], int]:
        """OffsetCommit v7 of (topic, partition, offset, metadata); the error per partition."""
        by_topic: dict[str, list[bytes]] = {}
        for topic, partition, offset, metadata in offsets:
            by_topic.setdefault(topic, []).append(struct.pack(">iqi", partition, offset, -1) + string(metadata))
        body = (
            string(self.group if group is None else group)
            + struct.pack(">i", self.generation if generation is None else generation)
            + string(self.member_id if member_id is None else member_id) + string(self.instance_id)
            + _array([string(t) + _array(parts) for t, parts in by_topic.items()])
        )
        r = self.call(OFFSET_COMMIT, 7, body)
        r.i32()
        out = {}
        for _ in range(r.i32()):
            topic = r.string() or ""
            for _ in range(r.i32()):
                partition = r.i32()
                out[(topic, partition)] = r.i16()
        return out

    def fetch(
        self, topics: dict[str, list[int]] | None = None, group: str | None = None
    ) -> tuple[int, dict[tuple[str, int], tuple[int, str | None, int]]]:
        """OffsetFetch v5: (group error, {(topic, partition): (offset, metadata, error)})."""
        if topics is None:
            wanted = struct.pack(">i", -1)
        else:
            wanted = _array([string(t) + _array([struct.pack(">i", p) for p in ps]) for t, ps in topics.items()])
        r = self.call(OFFSET_FETCH, 5, string(self.group if group is None else group) + wanted)
        r.i32()
        out = {}
        for _ in range(r.i32()):
            topic = r.string() or ""
            for _ in range(r.i32()):
                partition, offset, _epoch = r.i32(), r.i64(), r.i32()
                metadata, error = r.string(), r.i16()
                out[(topic, partition)] = (offset, metadata, error)
        return r.i16(), out

    # --- admin ---------------------------------------------------------------------------------------
    def describe(self, *groups: str) -> list[dict[str, object]]:
        r = self.call(DESCRIBE_GROUPS, 4, _array([string(g) for g in groups]) + b"\x00")
        r.i32()
        out = []
        for _ in range(r.i32()):
            error, group_id, state = r.i16(), r.string(), r.string()
            protocol_type, protocol = r.string(), r.string()
            members = []
            for _ in range(r.i32()):
                members.append({
                    "member_id": r.string(), "instance_id": r.string(), "client_id": r.string(),
                    "client_host": r.string(), "metadata": r.bytes_(), "assignment": r.bytes_(),
                })
            r.i32()
            out.append({"error": error, "group": group_id, "state": state, "protocol_type": protocol_type,
                        "protocol": protocol, "members": members})
        return out

    def delete_groups(self, *groups: str) -> dict[str, int]:
        r = self.call(DELETE_GROUPS, 1, _array([string(g) for g in groups]))
        r.i32()
        out = {}
        for _ in range(r.i32()):
            g = r.string() or ""
            out[g] = r.i16()
        return out

    def delete_offsets(
        self, topics: dict[str, list[int]], group: str | None = None
    ) -> tuple[int, dict[tuple[str, int], int]]:
        body = string(self.group if group is None else group) + _array(
            [string(t) + _array([struct.pack(">i", p) for p in ps]) for t, ps in topics.items()]
        )
        r = self.call(OFFSET_DELETE, 0, body)
        top = r.i16()
        r.i32()
        out = {}
        for _ in range(r.i32()):
            topic = r.string() or ""
            for _ in range(r.i32()):
                partition = r.i32()
                out[(topic, partition)] = r.i16()
        return top, out

    def find_coordinator(self, key: str, key_type: int = 0) -> tuple[int, int, str, int]:
        r = self.call(FIND_COORDINATOR, 2, string(key) + struct.pack(">b", key_type))
        r.i32()
        error = r.i16()
        r.string()
        return error, r.i32(), r.string() or "", r.i32()


def assignment(topic: str, partitions: list[int]) -> bytes:
    """A ConsumerProtocolAssignment v0."""
    parts = _array([struct.pack(">i", p) for p in partitions])
    return struct.pack(">h", 0) + _array([string(topic) + parts]) + nbytes(b"")


# --------------------------------------------------------------------------- __consumer_offsets


@dataclass
class GroupMetadataRecord:
    """A GroupMetadataValue read from __consumer_offsets, as Kafka tooling would decode it."""

    offset: int
    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    members: list[tuple[str, str | None]]  # (member id, group instance id)


def parse_group_metadata(
    key: bytes | None, value: bytes | None, group: str
) -> tuple[bool, GroupMetadataRecord | None]:
    """(is this group's metadata record, its value or None for a tombstone), by Kafka's key/value schemas."""
    if key is None or len(key) < 2:
        return False, None
    k = Reader(key)
    if k.i16() != 2 or k.string() != group:
        return False, None
    if value is None:
        return True, None
    r = Reader(value)
    version = r.i16()
    assert version == 3, f"GroupMetadataValue v{version}: Kafka writes v3"
    protocol_type, generation, protocol, leader = r.string() or "", r.i32(), r.string(), r.string()
    r.i64()  # current state timestamp
    members = []
    for _ in range(r.i32()):
        member_id, instance = r.string() or "", r.string()
        r.string()
        r.string()
        r.i32()
        r.i32()
        r.bytes_()
        r.bytes_()
        members.append((member_id, instance))
    return True, GroupMetadataRecord(-1, protocol_type, generation, protocol, leader, members)


def group_metadata_history(bootstrap: str, group: str, partitions: int = 50) -> list[GroupMetadataRecord | None]:
    """Every metadata record of ``group`` in __consumer_offsets, in log order (None = tombstone)."""
    from .helpers import confluent_read

    out: list[GroupMetadataRecord | None] = []
    records = confluent_read(bootstrap, "__consumer_offsets", range(partitions))
    for got in sorted(records, key=lambda g: (g.partition, g.offset)):
        mine, value = parse_group_metadata(got.key, got.value, group)
        if mine:
            if value is not None:
                value.offset = got.offset
            out.append(value)
    return out
