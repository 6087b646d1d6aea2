"""What the coordinator needs from any kind of group (classic, KIP-848 consumer), and shared values.

A shard holds its groups in ``GroupShard.groups`` (group id -> an object satisfying ``Group``); the
coordinator's generic APIs (OffsetCommit/Fetch/Delete, ListGroups, DescribeGroups, DeleteGroups) go
through this protocol only, so a new group type plugs in by implementing it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from kio.schema.errors import ErrorCode

CLASSIC = "classic"
CONSUMER = "consumer"


def now_ms() -> int:
    """Wall-clock milliseconds (commit timestamps, group state timestamps)."""
    return int(time.time() * 1000)


class GroupError(Exception):
    """A group operation refused with a Kafka error code."""

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(message or code.name)
        self.code = code


@dataclass(frozen=True, slots=True)
class DescribedMember:
    """One member as DescribeGroups reports it."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A group as DescribeGroups reports it."""

    state: str
    protocol_type: str
    protocol: str
    members: tuple[DescribedMember, ...]


class Group(Protocol):
    """Any group a shard holds."""

    group_id: str

    @property
    def group_type(self) -> str:
        """``classic`` or ``consumer`` (ListGroups v5 types filter)."""
        ...

    @property
    def state_name(self) -> str:
        """Kafka's state name (ListGroups, DescribeGroups)."""
        ...

    @property
    def protocol_type(self) -> str:
        ...

    def is_empty(self) -> bool:
        """No members: offsets may be committed by anyone (generation -1), the group may be deleted."""
        ...

    def validate_offset_commit(
        self, member_id: str, group_instance_id: str | None, generation_or_epoch: int, api_version: int,
        transactional: bool = False,
    ) -> None:
        """Raise GroupError unless this member may commit offsets now.

        ``transactional`` (TxnOffsetCommit): v0-v2 carry no member, so a commit without one is accepted in
        any state, and a rebalance in progress does not refuse it (Kafka's rules).
        """
        ...

    def validate_offset_fetch(self, member_id: str | None, member_epoch: int) -> None:
        """Raise GroupError unless this (KIP-848, OffsetFetch v9+) member may fetch offsets."""
        ...

    def is_subscribed_to(self, topic: str) -> bool:
        """Whether a member subscribes to ``topic`` (OffsetDelete: GROUP_SUBSCRIBED_TO_TOPIC)."""
        ...

    def describe(self) -> GroupDescription:
        ...

    def offset_expiry_base_ms(self, commit_timestamp_ms: int) -> int | None:
        """When retention of an offset committed at ``commit_timestamp_ms`` starts counting; None: never now."""
        ...

    def delete_records(self) -> list[tuple[bytes, bytes | None]]:
        """Tombstones removing this group's persisted state (offsets excluded)."""
        ...

    def mark_dead(self) -> None:
        """The group is being deleted: refuse every request from now on, cancel timers."""
        ...

    def shutdown(self) -> None:
        """Cancel timers and answer waiting requests with NOT_COORDINATOR (shard unloaded)."""
        ...


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Coordinator settings (Kafka's names in brokers/config.py)."""

    initial_rebalance_delay_ms: int = 3000
    min_session_timeout_ms: int = 6000
    max_session_timeout_ms: int = 1_800_000
    max_size: int = 2**31 - 1
    offset_metadata_max_bytes: int = 4096
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000
    offsets_retention_check_interval_ms: int = 600_000
    snapshot_records: int = 10_000
    """A shard writes a snapshot of its live state once this many records were appended since the last."""
    snapshot_batch_bytes: int = 1024 * 1024


class GroupStore(Protocol):
    """What a group needs of the shard that holds it: settings, durable writes, background tasks.

    Groups depend on this, not on ``shard.GroupShard``, so the shard can import the group types without
    an import circle (shard -> classic -> classic_base -> shard).
    """

    @property
    def config(self) -> GroupConfig: ...

    async def write(self, records: list[tuple[bytes, bytes | None]]) -> int:
        """Append records and apply them once durable; raises GroupError."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background for as long as the shard lives."""
        ...
