"""The ``__consumer_offsets`` record formats: Kafka's own key and value schemas, so Kafka tooling can read them.

Keys start with an int16 version: 0 and 1 are an offset commit (group, topic, partition), 2 is group
metadata (group); higher versions are KIP-848 consumer-group records (see ``UnknownKey``). Values: offset
commits are written as OffsetCommitValue v3 (v1 when an expire timestamp is set), group metadata as
GroupMetadataValue v3 — what Kafka writes — and every version 0..4 (v4 flexible) is read. A null value is
a tombstone. Layouts are in docs/data-formats.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OFFSET_COMMIT_KEY_V0 = 0
OFFSET_COMMIT_KEY = 1
GROUP_METADATA_KEY = 2

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class RecordFormatError(ValueError):
    """Bytes that are not a valid __consumer_offsets key or value."""


# --------------------------------------------------------------------------- primitives


class _Writer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def i16(self, v: int) -> None:
        self.buf += _I16.pack(v)

    def i32(self, v: int) -> None:
        self.buf += _I32.pack(v)

    def i64(self, v: int) -> None:
        self.buf += _I64.pack(v)

    def string(self, v: str | None) -> None:
        if v is None:
            self.i16(-1)
            return
        data = v.encode()
        if len(data) > 0x7FFF:
            raise RecordFormatError(f"string of {len(data)} bytes is longer than 32767")
        self.i16(len(data))
        self.buf += data

    def bytes_(self, v: bytes) -> None:
        self.i32(len(v))
        self.buf += v


class _Reader:
    __slots__ = ("data", "flexible", "pos")

    def __init__(self, data: bytes, pos: int = 0, flexible: bool = False) -> None:
        self.data = data
        self.pos = pos
        self.flexible = flexible

    def _take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.data):
            raise RecordFormatError(f"need {n} bytes at {start}, {len(self.data) - start} left")
        self.pos = start + n
        return start

    def i16(self) -> int:
        v: int = _I16.unpack_from(self.data, self._take(2))[0]
        return v

    def i32(self) -> int:
        v: int = _I32.unpack_from(self.data, self._take(4))[0]
        return v

    def i64(self) -> int:
        v: int = _I64.unpack_from(self.data, self._take(8))[0]
        return v

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.data[self._take(1)]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise RecordFormatError("unsigned varint too long")

    def _length(self, wide: bool) -> int:
        if self.flexible:
            return self.uvarint() - 1
        return self.i32() if wide else self.i16()

    def string(self) -> str | None:
        n = self._length(False)
        if n < 0:
            return None
        start = self._take(n)
        try:
            return self.data[start : start + n].decode()
        except UnicodeDecodeError as e:
            raise RecordFormatError(f"string is not UTF-8: {e}") from None

    def required_string(self) -> str:
        v = self.string()
        if v is None:
            raise RecordFormatError("null where a string is required")
        return v

    def bytes_(self) -> bytes:
        n = self._length(True)
        if n < 0:
            return b""
        start = self._take(n)
        return bytes(self.data[start : start + n])

    def array_length(self) -> int:
        n = self._length(True)
        if n > len(self.data):
            raise RecordFormatError(f"array of {n} elements in {len(self.data)} bytes")
        return max(n, 0)

    def tagged_fields(self) -> None:
        if not self.flexible:
            return
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self._take(self.uvarint())


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class OffsetKey:
    """Key of a committed offset (versions 0 and 1)."""

    group: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class GroupKey:
    """Key of a classic group's metadata (version 2)."""

    group: str


@dataclass(frozen=True, slots=True)
class UnknownKey:
    """A key version this module does not interpret (KIP-848 and later record types); ``data`` is the whole key."""

    version: int
    data: bytes


RecordKey = OffsetKey | GroupKey | UnknownKey


def encode_offset_key(group: str, topic: str, partition: int) -> bytes:
    w = _Writer()
    w.i16(OFFSET_COMMIT_KEY)
    w.string(group)
    w.string(topic)
    w.i32(partition)
    return bytes(w.buf)


def encode_group_key(group: str) -> bytes:
    w = _Writer()
    w.i16(GROUP_METADATA_KEY)
    w.string(group)
    return bytes(w.buf)


def decode_key(data: bytes) -> RecordKey:
    """The key's kind and fields; raises RecordFormatError."""
    r = _Reader(data)
    version = r.i16()
    if version in (OFFSET_COMMIT_KEY_V0, OFFSET_COMMIT_KEY):
        return OffsetKey(r.required_string(), r.required_string(), r.i32())
    if version == GROUP_METADATA_KEY:
        return GroupKey(r.required_string())
    return UnknownKey(version, data)


# --------------------------------------------------------------------------- offset commit values


@dataclass(frozen=True, slots=True)
class OffsetValue:
    """A committed offset as stored (OffsetCommitValue)."""

    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp: int
    expire_timestamp: int = -1


def encode_offset_value(v: OffsetValue) -> bytes:
    """OffsetCommitValue v3, or v1 when an expire timestamp is set (as Kafka chooses)."""
    w = _Writer()
    if v.expire_timestamp >= 0:
        w.i16(1)
        w.i64(v.offset)
        w.string(v.metadata)
        w.i64(v.commit_timestamp)
        w.i64(v.expire_timestamp)
        return bytes(w.buf)
    w.i16(3)
    w.i64(v.offset)
    w.i32(v.leader_epoch)
    w.string(v.metadata)
    w.i64(v.commit_timestamp)
    return bytes(w.buf)


def decode_offset_value(data: bytes) -> OffsetValue:
    r = _Reader(data)
    version = r.i16()
    if not 0 <= version <= 4:
        raise RecordFormatError(f"OffsetCommitValue version {version} is unknown")
    r.flexible = version >= 4
    offset = r.i64()
    leader_epoch = r.i32() if version >= 3 else -1
    metadata = r.string() or ""
    commit_ts = r.i64()
    expire_ts = r.i64() if version == 1 else -1
    r.tagged_fields()
    return OffsetValue(offset, leader_epoch, metadata, commit_ts, expire_ts)


# --------------------------------------------------------------------------- group metadata values


@dataclass(frozen=True, slots=True)
class MemberMetadata:
    """One member of a classic group as persisted (GroupMetadataValue.MemberMetadata)."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    subscription: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupValue:
    """A classic group as persisted after each completed rebalance (GroupMetadataValue)."""

    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    current_state_timestamp: int
    members: tuple[MemberMetadata, ...]


def encode_group_value(v: GroupValue) -> bytes:
    """GroupMetadataValue v3."""
    w = _Writer()
    w.i16(3)
    w.string(v.protocol_type)
    w.i32(v.generation)
    w.string(v.protocol)
    w.string(v.leader)
    w.i64(v.current_state_timestamp)
    w.i32(len(v.members))
    for m in v.members:
        w.string(m.member_id)
        w.string(m.group_instance_id)
        w.string(m.client_id)
        w.string(m.client_host)
        w.i32(m.rebalance_timeout_ms)
        w.i32(m.session_timeout_ms)
        w.bytes_(m.subscription)
        w.bytes_(m.assignment)
    return bytes(w.buf)


def decode_group_value(data: bytes) -> GroupValue:
    r = _Reader(data)
    version = r.i16()
    if not 0 <= version <= 4:
        raise RecordFormatError(f"GroupMetadataValue version {version} is unknown")
    r.flexible = version >= 4
    protocol_type = r.string() or ""
    generation = r.i32()
    protocol = r.string()
    leader = r.string()
    state_ts = r.i64() if version >= 2 else -1
    members = []
    for _ in range(r.array_length()):
        member_id = r.required_string()
        instance_id = r.string() if version >= 3 else None
        client_id = r.string() or ""
        client_host = r.string() or ""
        rebalance_timeout = r.i32() if version >= 1 else -1
        session_timeout = r.i32()
        subscription = r.bytes_()
        assignment = r.bytes_()
        r.tagged_fields()
        members.append(
            MemberMetadata(
                member_id, instance_id, client_id, client_host,
                rebalance_timeout if rebalance_timeout >= 0 else session_timeout, session_timeout,
                subscription, assignment,
            )
        )
    r.tagged_fields()
    return GroupValue(protocol_type, generation, protocol, leader, state_ts, tuple(members))


# --------------------------------------------------------------------------- partitioning


def java_string_hash(s: str) -> int:
    """Java's ``String.hashCode`` (over UTF-16 code units, 32-bit signed overflow)."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(group_id: str, partitions: int) -> int:
    """Kafka's offsets partition of a group: ``Utils.abs(groupId.hashCode) % partitions``.

    Kafka's ``Utils.abs`` is ``Math.abs`` except that ``Integer.MIN_VALUE`` maps to 0 (it is not
    ``hash & 0x7fffffff``, which gives other partitions for negative hashes).
    """
    h = java_string_hash(group_id)
    return (0 if h == -(1 << 31) else abs(h)) % partitions
