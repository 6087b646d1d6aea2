"""KIP-848 consumer-group records of ``__consumer_offsets``: Kafka's key versions 3..8, byte for byte.

A key is a non-flexible struct behind an int16 version (the record type); a value is a flexible struct
behind an int16 value version (0), ending in tagged fields (written empty, skipped when read); a null
value is a tombstone. docs/data-formats.md lists every field.

======  =======================================  =====================  =========================================
key v   record                                   key fields             value (v0)
======  =======================================  =====================  =========================================
3       ConsumerGroupMetadata                    group id               group epoch
4       ConsumerGroupPartitionMetadata           group id               subscribed topics: id, name, partitions
5       ConsumerGroupMemberMetadata              group id, member id    the member's subscription
6       ConsumerGroupTargetAssignmentMetadata    group id               target assignment epoch
7       ConsumerGroupTargetAssignmentMember      group id, member id    the member's target partitions
8       ConsumerGroupCurrentMemberAssignment     group id, member id    epochs, state, owned / revoking partitions
======  =======================================  =====================  =========================================
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from brokers.groups.assignors import Assignment, TopicInfo, TopicPartition

GROUP_EPOCH, SUBSCRIPTION_METADATA, MEMBER_SUBSCRIPTION, TARGET_EPOCH, TARGET_MEMBER, CURRENT_ASSIGNMENT = range(3, 9)
KEY_VERSIONS = frozenset(range(3, 9))
"""The record types (key versions) this module owns."""


class RecordFormatError(ValueError):
    """Bytes that are not a well-formed consumer-group record."""


# --- values ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ClassicMemberMetadata:
    """A member that speaks the classic protocol inside a consumer group (KIP-848 online migration).

    Kafka's tagged field 0 of ConsumerGroupMemberMetadataValue: the JoinGroup session timeout and every
    (protocol name, metadata) the member offered, so the group can answer its JoinGroup/SyncGroup/Heartbeat
    and be converted back into a classic group.
    """

    session_timeout_ms: int
    protocols: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class MemberSubscription:
    """What a member declared in its heartbeats (ConsumerGroupMemberMetadataValue)."""

    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    subscribed_topic_names: tuple[str, ...] = ()
    subscribed_topic_regex: str | None = None
    rebalance_timeout_ms: int = -1
    server_assignor: str | None = None
    classic: ClassicMemberMetadata | None = None
    """Set while the member uses the classic protocol (JoinGroup/SyncGroup/Heartbeat); None: consumer protocol."""


@dataclass(frozen=True, slots=True)
class CurrentAssignment:
    """A member's reconciliation state (ConsumerGroupCurrentMemberAssignmentValue)."""

    member_epoch: int = 0
    previous_member_epoch: int = 0
    state: int = 0
    assigned: Assignment = frozenset()
    pending_revocation: Assignment = frozenset()


# --- records (value None = tombstone) ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GroupEpochRecord:
    group_id: str
    epoch: int | None


@dataclass(frozen=True, slots=True)
class SubscriptionMetadataRecord:
    group_id: str
    topics: tuple[TopicInfo, ...] | None


@dataclass(frozen=True, slots=True)
class MemberSubscriptionRecord:
    group_id: str
    member_id: str
    value: MemberSubscription | None


@dataclass(frozen=True, slots=True)
class TargetEpochRecord:
    group_id: str
    epoch: int | None


@dataclass(frozen=True, slots=True)
class TargetMemberRecord:
    group_id: str
    member_id: str
    partitions: Assignment | None


@dataclass(frozen=True, slots=True)
class CurrentAssignmentRecord:
    group_id: str
    member_id: str
    value: CurrentAssignment | None


ConsumerRecord = (
    GroupEpochRecord
    | SubscriptionMetadataRecord
    | MemberSubscriptionRecord
    | TargetEpochRecord
    | TargetMemberRecord
    | CurrentAssignmentRecord
)


def is_tombstone(record: ConsumerRecord) -> bool:
    """Whether the record deletes its key."""
    if isinstance(record, GroupEpochRecord | TargetEpochRecord):
        return record.epoch is None
    if isinstance(record, SubscriptionMetadataRecord):
        return record.topics is None
    if isinstance(record, TargetMemberRecord):
        return record.partitions is None
    return record.value is None


# --- writer -----------------------------------------------------------------------------------------
class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def int8(self, v: int) -> None:
        self.parts.append(struct.pack(">b", v))

    def int16(self, v: int) -> None:
        self.parts.append(struct.pack(">h", v))

    def int32(self, v: int) -> None:
        self.parts.append(struct.pack(">i", v))

    def uvarint(self, v: int) -> None:
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        self.parts.append(bytes(out))

    def cbytes(self, b: bytes) -> None:  # compact, not nullable
        self.uvarint(len(b) + 1)
        self.parts.append(b)

    def string(self, s: str) -> None:  # non-flexible (keys)
        b = s.encode()
        self.int16(len(b))
        self.parts.append(b)

    def cstring(self, s: str | None) -> None:  # compact, nullable
        if s is None:
            self.uvarint(0)
            return
        b = s.encode()
        self.uvarint(len(b) + 1)
        self.parts.append(b)

    def uuid(self, topic_id: str) -> None:
        self.parts.append(uuid.UUID(topic_id).bytes)

    def no_tags(self) -> None:
        self.uvarint(0)

    def topic_partitions(self, assignment: Assignment) -> None:
        by_topic: dict[str, list[int]] = {}
        for tid, p in assignment:
            by_topic.setdefault(tid, []).append(p)
        self.uvarint(len(by_topic) + 1)
        for tid in sorted(by_topic):
            self.uuid(tid)
            parts = sorted(by_topic[tid])
            self.uvarint(len(parts) + 1)
            for p in parts:
                self.int32(p)
            self.no_tags()

    def done(self) -> bytes:
        return b"".join(self.parts)


def _key(version: int, group_id: str, member_id: str | None = None) -> bytes:
    w = _Writer()
    w.int16(version)
    w.string(group_id)
    if member_id is not None:
        w.string(member_id)
    return w.done()


def _classic_tag(classic: ClassicMemberMetadata) -> bytes:
    """The tagged-field section holding ClassicMemberMetadata as tag 0."""
    body = _Writer()
    body.int32(classic.session_timeout_ms)
    body.uvarint(len(classic.protocols) + 1)
    for name, metadata in classic.protocols:
        body.cstring(name)
        body.cbytes(metadata)
        body.no_tags()
    body.no_tags()
    data = body.done()
    w = _Writer()
    w.uvarint(1)  # one tagged field
    w.uvarint(0)  # tag 0: ClassicMemberMetadata
    w.uvarint(len(data))
    w.parts.append(data)
    return w.done()


def encode(record: ConsumerRecord) -> tuple[bytes, bytes | None]:
    """The record's key and value bytes (value None for a tombstone)."""
    w = _Writer()
    w.int16(0)  # value version
    match record:
        case GroupEpochRecord(group_id, epoch):
            key = _key(GROUP_EPOCH, group_id)
            if epoch is None:
                return key, None
            w.int32(epoch)
        case SubscriptionMetadataRecord(group_id, topics):
            key = _key(SUBSCRIPTION_METADATA, group_id)
            if topics is None:
                return key, None
            w.uvarint(len(topics) + 1)
            for t in sorted(topics, key=lambda t: t.name):
                w.uuid(t.topic_id)
                w.cstring(t.name)
                w.int32(t.partitions)
                w.uvarint(1)  # PartitionRacks: empty (racks are not tracked)
                w.no_tags()
        case MemberSubscriptionRecord(group_id, member_id, sub):
            key = _key(MEMBER_SUBSCRIPTION, group_id, member_id)
            if sub is None:
                return key, None
            w.cstring(sub.instance_id)
            w.cstring(sub.rack_id)
            w.cstring(sub.client_id)
            w.cstring(sub.client_host)
            w.uvarint(len(sub.subscribed_topic_names) + 1)
            for name in sub.subscribed_topic_names:
                w.cstring(name)
            w.cstring(sub.subscribed_topic_regex)
            w.int32(sub.rebalance_timeout_ms)
            w.cstring(sub.server_assignor)
            if sub.classic is not None:
                return key, w.done() + _classic_tag(sub.classic)
        case TargetEpochRecord(group_id, epoch):
            key = _key(TARGET_EPOCH, group_id)
            if epoch is None:
                return key, None
            w.int32(epoch)
        case TargetMemberRecord(group_id, member_id, partitions):
            key = _key(TARGET_MEMBER, group_id, member_id)
            if partitions is None:
                return key, None
            w.topic_partitions(partitions)
        case CurrentAssignmentRecord(group_id, member_id, cur):
            key = _key(CURRENT_ASSIGNMENT, group_id, member_id)
            if cur is None:
                return key, None
            w.int32(cur.member_epoch)
            w.int32(cur.previous_member_epoch)
            w.int8(cur.state)
            w.topic_partitions(cur.assigned)
            w.topic_partitions(cur.pending_revocation)
    w.no_tags()
    return key, w.done()


# --- reader -----------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise RecordFormatError(f"record truncated at byte {self.pos} (wanted {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int8(self) -> int:
        return int(struct.unpack(">b", self.take(1))[0])

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise RecordFormatError("varint too long")

    def string(self) -> str:
        return self._text(self.int16())

    def cstring(self) -> str | None:
        n = self.uvarint()
        return None if n == 0 else self._text(n - 1)

    def cstring_required(self) -> str:
        s = self.cstring()
        if s is None:
            raise RecordFormatError("null where a string is required")
        return s

    def _text(self, n: int) -> str:
        try:
            return bytes(self.take(n)).decode()
        except UnicodeDecodeError as e:
            raise RecordFormatError(f"string is not UTF-8: {e}") from None

    def array_len(self) -> int:
        n = self.uvarint()
        if n == 0:
            raise RecordFormatError("null where an array is required")
        return n - 1

    def uuid(self) -> str:
        return str(uuid.UUID(bytes=bytes(self.take(16))))

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())

    def topic_partitions(self) -> Assignment:
        out: list[TopicPartition] = []
        for _ in range(self.array_len()):
            tid = self.uuid()
            out.extend((tid, self.int32()) for _ in range(self.array_len()))
            self.skip_tags()
        return frozenset(out)


def key_version(key: bytes) -> int:
    """The record type of a ``__consumer_offsets`` key (its leading int16)."""
    if len(key) < 2:
        raise RecordFormatError("key shorter than its version")
    return int(struct.unpack_from(">h", key)[0])


def decode(key: bytes, value: bytes | None) -> ConsumerRecord:
    """Parse one record of key version 3..8; raises RecordFormatError."""
    k = _Reader(key)
    version = k.int16()
    if version not in KEY_VERSIONS:
        raise RecordFormatError(f"key version {version} is not a consumer-group record")
    group_id = k.string()
    member_id = k.string() if version in (MEMBER_SUBSCRIPTION, TARGET_MEMBER, CURRENT_ASSIGNMENT) else ""
    if value is None:
        return _tombstone(version, group_id, member_id)
    r = _Reader(value)
    value_version = r.int16()
    if value_version != 0:
        raise RecordFormatError(f"value version {value_version} of key version {version} is unknown")
    record: ConsumerRecord
    if version == GROUP_EPOCH:
        record = GroupEpochRecord(group_id, r.int32())
    elif version == SUBSCRIPTION_METADATA:
        topics = []
        for _ in range(r.array_len()):
            tid, name, n = r.uuid(), r.cstring_required(), r.int32()
            for _ in range(r.array_len()):  # PartitionRacks
                r.int32()
                for _ in range(r.array_len()):
                    r.cstring()
                r.skip_tags()
            r.skip_tags()
            topics.append(TopicInfo(tid, name, n))
        record = SubscriptionMetadataRecord(group_id, tuple(topics))
    elif version == MEMBER_SUBSCRIPTION:
        instance_id, rack_id, client_id, client_host = r.cstring(), r.cstring(), r.cstring_required(), r.cstring()
        names = tuple(r.cstring_required() for _ in range(r.array_len()))
        sub = MemberSubscription(
            instance_id, rack_id, client_id, client_host or "", names, r.cstring(), r.int32(), r.cstring(),
            _read_classic_tag(r),
        )
        return MemberSubscriptionRecord(group_id, member_id, sub)
    elif version == TARGET_EPOCH:
        record = TargetEpochRecord(group_id, r.int32())
    elif version == TARGET_MEMBER:
        record = TargetMemberRecord(group_id, member_id, r.topic_partitions())
    else:
        epoch, previous, state = r.int32(), r.int32(), r.int8()
        cur = CurrentAssignment(epoch, previous, state, r.topic_partitions(), r.topic_partitions())
        record = CurrentAssignmentRecord(group_id, member_id, cur)
    r.skip_tags()
    return record


def _read_classic_tag(r: _Reader) -> ClassicMemberMetadata | None:
    """The value's tagged fields: ClassicMemberMetadata if tag 0 is there, other tags skipped."""
    classic = None
    for _ in range(r.uvarint()):
        tag, size = r.uvarint(), r.uvarint()
        data = bytes(r.take(size))
        if tag != 0:
            continue
        t = _Reader(data)
        session_timeout_ms = t.int32()
        protocols = []
        for _ in range(t.array_len()):
            name = t.cstring_required()
            protocols.append((name, bytes(t.take(t.array_len()))))
            t.skip_tags()
        t.skip_tags()
        classic = ClassicMemberMetadata(session_timeout_ms, tuple(protocols))
    return classic


def _tombstone(version: int, group_id: str, member_id: str) -> ConsumerRecord:
    if version == GROUP_EPOCH:
        return GroupEpochRecord(group_id, None)
    if version == SUBSCRIPTION_METADATA:
        return SubscriptionMetadataRecord(group_id, None)
    if version == MEMBER_SUBSCRIPTION:
        return MemberSubscriptionRecord(group_id, member_id, None)
    if version == TARGET_EPOCH:
        return TargetEpochRecord(group_id, None)
    if version == TARGET_MEMBER:
        return TargetMemberRecord(group_id, member_id, None)
    return CurrentAssignmentRecord(group_id, member_id, None)
