"""State shared by the classic protocol: a classic group's members, its view as a ``Group``, its metadata.

``ClassicGroupBase`` holds a group's state (members, static instance ids, generation, protocol, leader)
and everything that does not drive a rebalance: member validation and expiry timers, protocol choice,
the persisted metadata record, and the ``Group`` protocol the coordinator's generic APIs use. The
rebalance itself (JoinGroup/SyncGroup/Heartbeat/LeaveGroup) is ``classic.ClassicGroup``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import Counter
from enum import Enum
from typing import Self

from kio.schema.errors import ErrorCode

from brokers.groups import records as rec
from brokers.groups.base import CLASSIC, DescribedMember, GroupDescription, GroupError, GroupStore, now_ms
from brokers.groups.member import ClassicMember, JoinResult, SyncResult

log = logging.getLogger(__name__)
CONSUMER_PROTOCOL_TYPE = "consumer"


class GroupState(Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


def subscribed_topics(metadata: bytes) -> set[str] | None:
    """Topics of a ConsumerProtocolSubscription (any version); None if it does not parse."""
    try:
        pos = 2  # version
        (count,) = struct.unpack_from(">i", metadata, pos)
        pos += 4
        topics = set()
        for _ in range(count):
            (n,) = struct.unpack_from(">h", metadata, pos)
            pos += 2
            if n < 0 or pos + n > len(metadata):
                return None
            topics.add(metadata[pos : pos + n].decode())
            pos += n
        return topics
    except (struct.error, UnicodeDecodeError):
        return None


class ClassicGroupBase:
    """A classic group's state and its ``Group`` view; see ``classic.ClassicGroup`` for the protocol."""

    def __init__(self, group_id: str, shard: GroupStore) -> None:
        self.group_id = group_id
        self._shard = shard
        self._config = shard.config
        self.state = GroupState.EMPTY
        self.state_timestamp_ms = now_ms()
        self.generation = 0
        self._protocol_type: str | None = None
        self.protocol_name: str | None = None
        self.leader_id: str | None = None
        self.members: dict[str, ClassicMember] = {}
        self.static_members: dict[str, str] = {}
        self.pending_members: dict[str, asyncio.TimerHandle] = {}
        self.pending_sync: set[str] = set()
        self._join_timer: asyncio.TimerHandle | None = None
        self._initial_remaining_ms = 0
        self._in_initial_delay = False
        self._new_member_added = False
        self._sync_timer: asyncio.TimerHandle | None = None
        self._storing: int | None = None
        self.converting: asyncio.Future[None] | None = None
        """Set while the group is being converted into a consumer group (KIP-848 upgrade): requests wait."""

    @classmethod
    def restore(cls, group_id: str, shard: GroupStore, value: rec.GroupValue) -> Self:
        """The group as persisted: Stable with its members (their sessions start now), or Empty."""
        group = cls(group_id, shard)
        group.generation = value.generation
        group._protocol_type = value.protocol_type or None
        if value.current_state_timestamp >= 0:
            group.state_timestamp_ms = value.current_state_timestamp
        if value.members and value.protocol is not None:
            group.protocol_name = value.protocol
            group.state = GroupState.STABLE
            for m in value.members:
                member = ClassicMember(
                    m.member_id, m.group_instance_id, m.client_id, m.client_host, m.rebalance_timeout_ms,
                    m.session_timeout_ms, value.protocol_type, ((value.protocol, m.subscription),), m.assignment,
                )
                group.members[m.member_id] = member
                if m.group_instance_id is not None:
                    group.static_members[m.group_instance_id] = m.member_id
                group._schedule_expiry(member)
            group.leader_id = value.leader if value.leader in group.members else next(iter(group.members))
        return group

    # --- the Group protocol ---------------------------------------------------------------------------
    @property
    def group_type(self) -> str:
        return CLASSIC

    @property
    def state_name(self) -> str:
        return self.state.value

    @property
    def protocol_type(self) -> str:
        return self._protocol_type or ""

    def is_empty(self) -> bool:
        return self.state is GroupState.EMPTY

    def validate_offset_commit(
        self, member_id: str, group_instance_id: str | None, generation_or_epoch: int, api_version: int,
        transactional: bool = False,
    ) -> None:
        if self.state is GroupState.DEAD:
            raise GroupError(ErrorCode.coordinator_not_available, "group is being deleted")
        if generation_or_epoch < 0 and self.state is GroupState.EMPTY:
            return  # admin tools and assign() consumers commit to empty groups
        if generation_or_epoch >= 0 or member_id or group_instance_id is not None:
            self._validate_member(member_id, group_instance_id)
            if generation_or_epoch != self.generation:
                raise GroupError(
                    ErrorCode.illegal_generation,
                    f"generation {generation_or_epoch} is not the group's generation {self.generation}",
                )
        elif self.state is not GroupState.EMPTY and not transactional:
            raise GroupError(ErrorCode.unknown_member_id, "the group has members: commit as one of them")
        if self.state is GroupState.COMPLETING_REBALANCE and not transactional:
            raise GroupError(ErrorCode.rebalance_in_progress, "the group is completing a rebalance")

    def validate_offset_fetch(self, member_id: str | None, member_epoch: int) -> None:
        if self.state is GroupState.DEAD:
            raise GroupError(ErrorCode.group_id_not_found, "group is being deleted")

    def is_subscribed_to(self, topic: str) -> bool:
        if self._protocol_type != CONSUMER_PROTOCOL_TYPE or self.protocol_name is None:
            return False
        for member in self.members.values():
            topics = subscribed_topics(member.metadata(self.protocol_name))
            if topics is None or topic in topics:
                return True
        return False

    def describe(self) -> GroupDescription:
        stable = self.state is GroupState.STABLE and self.protocol_name is not None
        members = tuple(
            DescribedMember(
                m.member_id, m.group_instance_id, m.client_id, m.client_host,
                m.metadata(self.protocol_name) if stable and self.protocol_name else b"",
                m.assignment if stable else b"",
            )
            for m in self.members.values()
        )
        return GroupDescription(
            self.state.value, self.protocol_type, (self.protocol_name or "") if stable else "", members
        )

    def offset_expiry_base_ms(self, commit_timestamp_ms: int) -> int | None:
        if self.state is not GroupState.EMPTY:
            return None
        if self._protocol_type is None:
            return commit_timestamp_ms  # a simple group: each offset's own commit time
        return self.state_timestamp_ms  # retention counts from when the group became empty

    def delete_records(self) -> list[tuple[bytes, bytes | None]]:
        return [(rec.encode_group_key(self.group_id), None)]

    def shutdown(self) -> None:
        for handle in (self._join_timer, self._sync_timer, *self.pending_members.values()):
            if handle is not None:
                handle.cancel()
        self._join_timer = self._sync_timer = None
        self.pending_members.clear()
        for member in self.members.values():
            member.cancel_expiry()
            member.answer_join(JoinResult(ErrorCode.not_coordinator, member.member_id))
            member.answer_sync(SyncResult(ErrorCode.not_coordinator))

    def mark_dead(self) -> None:
        """The group is deleted: refuse everything from now on."""
        self.shutdown()
        self.members.clear()
        self.static_members.clear()
        self._set_state(GroupState.DEAD)

    # --- join answers, protocol choice, persisted metadata --------------------------------------------
    def _current_join_result(self, member: ClassicMember, leader_view: bool, skip: bool = False) -> JoinResult:
        return JoinResult(
            ErrorCode.none, member.member_id, self.generation, self._protocol_type, self.protocol_name,
            self.leader_id or "", self._member_list() if leader_view else (), skip,
        )

    def _member_list(self) -> tuple[tuple[str, str | None, bytes], ...]:
        protocol = self.protocol_name or ""
        return tuple((m.member_id, m.group_instance_id, m.metadata(protocol)) for m in self.members.values())

    def _replace_member(self, old_id: str, member: ClassicMember) -> None:
        self.members = {(member.member_id if k == old_id else k): (member if k == old_id else v)
                        for k, v in self.members.items()}
        if member.group_instance_id is not None:
            self.static_members[member.group_instance_id] = member.member_id
        if self.leader_id == old_id:
            self.leader_id = member.member_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(member.member_id)

    def _rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def _select_protocol(self) -> str | None:
        members = list(self.members.values())
        if not members:
            return None
        candidates = set(members[0].protocol_names)
        for m in members[1:]:
            candidates &= set(m.protocol_names)
        votes: Counter[str] = Counter()
        for m in members:
            choice = next((p for p in m.protocol_names if p in candidates), None)
            if choice is not None:
                votes[choice] += 1
        if not votes:
            return None
        best = max(votes.values())
        leader = self.members.get(self.leader_id or "") or members[0]
        return next(p for p in leader.protocol_names if votes.get(p) == best)

    def _supports(self, protocol_type: str, protocols: tuple[tuple[str, bytes], ...], exclude: str | None) -> bool:
        if not protocol_type or not protocols:
            return False
        others = [m for k, m in self.members.items() if k != exclude]
        if not others:
            return True
        if protocol_type != self._protocol_type:
            return False
        common = set(others[0].protocol_names)
        for m in others[1:]:
            common &= set(m.protocol_names)
        return any(name in common for name, _ in protocols)

    def _metadata_record(self, assignments: dict[str, bytes] | None = None) -> tuple[bytes, bytes | None]:
        protocol = self.protocol_name
        members = tuple(
            rec.MemberMetadata(
                m.member_id, m.group_instance_id, m.client_id, m.client_host, m.rebalance_timeout_ms,
                m.session_timeout_ms, m.metadata(protocol or ""),
                assignments.get(m.member_id, b"") if assignments is not None else m.assignment,
            )
            for m in self.members.values()
        )
        value = rec.GroupValue(
            self._protocol_type or "", self.generation, protocol, self.leader_id, self.state_timestamp_ms, members
        )
        return rec.encode_group_key(self.group_id), rec.encode_group_value(value)

    # --- members --------------------------------------------------------------------------------------
    def _validate_member(self, member_id: str, group_instance_id: str | None) -> ClassicMember:
        if group_instance_id is not None:
            current = self.static_members.get(group_instance_id)
            if current is not None and current != member_id:
                raise GroupError(ErrorCode.fenced_instance_id, f"instance {group_instance_id} is now {current}")
        member = self.members.get(member_id)
        if member is None:
            raise GroupError(ErrorCode.unknown_member_id, f"{member_id!r} is not a member of {self.group_id!r}")
        if member.group_instance_id != group_instance_id:
            raise GroupError(ErrorCode.fenced_instance_id, f"{member_id} has another group.instance.id")
        return member

    def _remove_member(self, member_id: str, error: ErrorCode) -> None:
        member = self.members.pop(member_id, None)
        if member is None:
            return
        member.cancel_expiry()
        member.answer_join(JoinResult(error, member_id))
        member.answer_sync(SyncResult(error))
        if member.group_instance_id is not None and self.static_members.get(member.group_instance_id) == member_id:
            del self.static_members[member.group_instance_id]
        self.pending_sync.discard(member_id)
        if self.leader_id == member_id:
            self.leader_id = next(iter(self.members), None)

    def _schedule_expiry(self, member: ClassicMember) -> None:
        member.cancel_expiry()
        member.expiry = asyncio.get_running_loop().call_later(
            member.session_timeout_ms / 1000, self._expire, member.member_id
        )

    def _expire(self, member_id: str) -> None:
        member = self.members.get(member_id)
        if member is None:
            return
        member.expiry = None
        if member.awaiting_join or member.awaiting_sync:  # Kafka keeps members waiting on us alive
            self._schedule_expiry(member)
            return
        log.info("group %s: member %s expired (no heartbeat within %d ms)",
                 self.group_id, member_id, member.session_timeout_ms)
        self._remove_member(member_id, ErrorCode.unknown_member_id)
        self._members_changed(f"member {member_id} expired")

    def _expire_pending(self, member_id: str) -> None:
        if self.pending_members.pop(member_id, None) is not None:
            self._check_join_complete()

    def _set_state(self, state: GroupState) -> None:
        self.state = state
        self.state_timestamp_ms = now_ms()

    # --- what the rebalance logic provides -----------------------------------------------------
    def _members_changed(self, reason: str) -> None:
        raise NotImplementedError

    def _check_join_complete(self) -> None:
        raise NotImplementedError
