"""The embedded consumer protocol of classic groups (ConsumerProtocolSubscription / ConsumerProtocolAssignment).

A classic member's JoinGroup metadata and its SyncGroup assignment are these structs behind an int16
version. The broker reads them only where Kafka does: to move a live group between the classic and the
consumer (KIP-848) protocol, and to serve classic members of a consumer group (their subscription and the
partitions they still own in, their assignment out). Versions: subscription v0 topics + user data, v1 owned
partitions, v2 generation, v3 rack; assignment v0..v3 share one layout. A newer version is read as the
newest known one (its extra fields come after), as Kafka's readers do.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

MAX_VERSION = 3


class ProtocolFormatError(ValueError):
    """Bytes that are not a well-formed embedded consumer protocol struct."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A ConsumerProtocolSubscription as far as the coordinator needs it."""

    version: int
    topics: tuple[str, ...]
    owned: tuple[tuple[str, int], ...] = ()
    """(topic name, partition) the member still owns (v1+; eager members report none)."""
    rack_id: str | None = None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProtocolFormatError(f"truncated at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def string(self, nullable: bool = False) -> str | None:
        n = self.unpack(">h")
        if n < 0:
            if nullable:
                return None
            raise ProtocolFormatError("null string")
        if self.pos + n > len(self.data):
            raise ProtocolFormatError(f"string truncated at byte {self.pos}")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise ProtocolFormatError(f"string is not UTF-8: {e}") from None

    def name(self) -> str:
        value = self.string()
        if value is None:  # not reachable: string() refuses null unless nullable
            raise ProtocolFormatError("null string")
        return value

    def count(self) -> int:
        n = self.unpack(">i")
        if n < 0 or n > len(self.data):
            raise ProtocolFormatError(f"array length {n} at byte {self.pos}")
        return n

    def skip_bytes(self) -> None:
        n = self.unpack(">i")
        if n > 0:
            if self.pos + n > len(self.data):
                raise ProtocolFormatError("bytes truncated")
            self.pos += n

    def topic_partitions(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for _ in range(self.count()):
            topic = self.name()
            out.extend((topic, self.unpack(">i")) for _ in range(self.count()))
        return out


def version_of(metadata: bytes) -> int:
    """The struct's version (its leading int16), capped at the newest one we know."""
    if len(metadata) < 2:
        raise ProtocolFormatError("shorter than its version")
    version = int(struct.unpack_from(">h", metadata)[0])
    if version < 0:
        raise ProtocolFormatError(f"negative version {version}")
    return min(version, MAX_VERSION)


def parse_subscription(metadata: bytes) -> Subscription:
    """A JoinGroup protocol's metadata; raises ProtocolFormatError."""
    version = version_of(metadata)
    r = _Reader(metadata)
    r.pos = 2
    topics = tuple(r.name() for _ in range(r.count()))
    r.skip_bytes()  # user data
    owned: list[tuple[str, int]] = []
    rack = None
    if version >= 1:
        owned = r.topic_partitions()
    if version >= 2:
        r.unpack(">i")  # generation id
    if version >= 3:
        rack = r.string(nullable=True)
    return Subscription(version, topics, tuple(owned), rack)


def parse_assignment(data: bytes) -> list[tuple[str, int]]:
    """A SyncGroup assignment's (topic, partition) pairs; empty bytes: nothing; raises ProtocolFormatError."""
    if not data:
        return []
    version_of(data)
    r = _Reader(data)
    r.pos = 2
    return r.topic_partitions()


def serialize_assignment(partitions: Iterable[tuple[str, int]], version: int = 0) -> bytes:
    """A ConsumerProtocolAssignment of ``partitions`` (by topic name) with no user data."""
    by_topic: dict[str, list[int]] = {}
    for topic, p in partitions:
        by_topic.setdefault(topic, []).append(p)
    out = [struct.pack(">hi", min(max(version, 0), MAX_VERSION), len(by_topic))]
    for name in sorted(by_topic):
        raw = name.encode()
        parts = sorted(by_topic[name])
        out.append(struct.pack(">h", len(raw)) + raw + struct.pack(f">i{len(parts)}i", len(parts), *parts))
    out.append(struct.pack(">i", -1))
    return b"".join(out)
