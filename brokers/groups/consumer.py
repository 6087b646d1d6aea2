"""The KIP-848 consumer group: group epoch, target assignment, and each member's reconciliation to it.

As in Kafka's GroupMetadataManager, a heartbeat is computed against the current state without changing
it (consumer_heartbeat.py returns the records the change consists of plus the answer), and the state
only moves when those records are replayed (``ConsumerGroup.replay``) once they are durable, which is
also how the group is rebuilt when its ``__consumer_offsets`` partition is taken over. The caller
serialises the heartbeats of one group (compute → write → replay; consumer_shard.py).

* The **group epoch** is bumped whenever membership, a subscription or subscribed topic metadata
  (partition counts) changes; a new **target assignment** is then computed by the server-side assignor
  and stamped with that epoch.
* Each member walks towards its target (``reconcile``): partitions it must give up are revoked first
  while it stays at its epoch (UNREVOKED_PARTITIONS); only once it reports them gone does it move to the
  target epoch, and it is given a partition only when no other member still holds it
  (UNRELEASED_PARTITIONS until then). So a partition is never owned by two members at once.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Protocol

from kio.schema.errors import ErrorCode

from brokers.groups.assignors import DEFAULT_ASSIGNOR, EMPTY, Assignment, TopicInfo
from brokers.groups.base import CONSUMER, DescribedMember, GroupDescription, GroupError
from brokers.groups.consumer_records import (
    ConsumerRecord,
    CurrentAssignment,
    CurrentAssignmentRecord,
    GroupEpochRecord,
    MemberSubscription,
    MemberSubscriptionRecord,
    SubscriptionMetadataRecord,
    TargetEpochRecord,
    TargetMemberRecord,
    encode,
)

LEAVE_EPOCH = -1
LEAVE_STATIC_EPOCH = -2


class MemberState(IntEnum):
    """A member's reconciliation state (the int8 Kafka persists)."""

    STABLE = 0
    UNREVOKED_PARTITIONS = 1
    UNRELEASED_PARTITIONS = 2
    UNKNOWN = 127


class TopicView(Protocol):
    """The topics a group can see: by name, every name, and a counter that moves when any topic changes."""

    @property
    def generation(self) -> int: ...

    def topic(self, name: str) -> TopicInfo | None: ...

    def names(self) -> Iterable[str]: ...


@dataclass(frozen=True, slots=True)
class ConsumerGroupConfig:
    """Broker settings of consumer groups (group.consumer.*)."""

    heartbeat_interval_ms: int = 5000
    session_timeout_ms: int = 45000
    max_size: int = 2**31 - 1
    migration_policy: str = "bidirectional"
    """group.consumer.migration.policy: which online conversions of non-empty groups are allowed."""
    classic_max_size: int = 2**31 - 1
    """group.max.size: a downgrade must leave a classic group no larger than this."""

    @property
    def upgrade_enabled(self) -> bool:
        return self.migration_policy in ("bidirectional", "upgrade")

    @property
    def downgrade_enabled(self) -> bool:
        return self.migration_policy in ("bidirectional", "downgrade")


@dataclass(frozen=True, slots=True)
class ConsumerMember:
    """A member: its subscription (record 5) and its reconciliation state (record 8)."""

    member_id: str
    sub: MemberSubscription = field(default_factory=MemberSubscription)
    cur: CurrentAssignment = field(default_factory=CurrentAssignment)

    @property
    def epoch(self) -> int:
        return self.cur.member_epoch

    @property
    def state(self) -> MemberState:
        return member_state(self.cur.state)

    @property
    def uses_classic(self) -> bool:
        """A classic-protocol member (JoinGroup/SyncGroup/Heartbeat) of this consumer group."""
        return self.sub.classic is not None


def member_state(value: int) -> MemberState:
    """The persisted int8 as a state (UNKNOWN for values a newer version may have written)."""
    try:
        return MemberState(value)
    except ValueError:
        return MemberState.UNKNOWN


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A ConsumerGroupHeartbeat request as the state machine sees it (None = unchanged since last time)."""

    member_id: str
    member_epoch: int
    instance_id: str | None = None
    rack_id: str | None = None
    rebalance_timeout_ms: int = -1
    subscribed_topic_names: tuple[str, ...] | None = None
    subscribed_topic_regex: str | None = None
    server_assignor: str | None = None
    owned: Assignment | None = None
    client_id: str = ""
    client_host: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a heartbeat changes (records to write, then replay) and what the member is told."""

    records: tuple[ConsumerRecord, ...]
    member_id: str
    member_epoch: int
    assignment: Assignment | None = None
    """Sent only when it changed or the request was a full one; None = leave the field out."""
    revoking: bool = False
    """The member must revoke partitions within its rebalance timeout."""
    rebalance_timeout_ms: int = -1


def reconcile(
    cur: CurrentAssignment,
    target_epoch: int,
    target: Assignment,
    owner_epoch: Callable[[tuple[str, int]], int],
    owned: Assignment | None,
) -> CurrentAssignment:
    """One step of a member towards its target (Kafka's CurrentAssignmentBuilder).

    ``owner_epoch(tp)`` is the epoch of whoever holds ``tp`` now (-1 if free); ``owned`` is what the
    member reported owning (None if it did not say, which counts as still owning everything).
    """
    state = member_state(cur.state)

    def still_owns(revoking: Assignment) -> bool:
        return owned is None or not owned.isdisjoint(revoking)

    if state == MemberState.STABLE and cur.member_epoch == target_epoch:
        return cur
    if state == MemberState.UNREVOKED_PARTITIONS and still_owns(cur.pending_revocation):
        return cur
    if state == MemberState.UNKNOWN and (owned is None or owned):
        raise GroupError(ErrorCode.fenced_member_epoch, "the member is in an unknown state and must rejoin")
    keep = cur.assigned & target
    revoke = cur.assigned - keep
    wanted = target - keep
    free = frozenset(tp for tp in wanted if owner_epoch(tp) == -1 or tp in cur.pending_revocation)
    unreleased = len(free) < len(wanted)
    if revoke and still_owns(revoke):
        # Revoke first: the member stays at its epoch until it reports these partitions gone.
        return _moved(cur, cur.member_epoch, MemberState.UNREVOKED_PARTITIONS, keep, revoke)
    state_next = MemberState.UNRELEASED_PARTITIONS if unreleased else MemberState.STABLE
    return _moved(cur, target_epoch, state_next, keep | free, EMPTY)


def _moved(
    cur: CurrentAssignment, epoch: int, state: MemberState, assigned: Assignment, revoking: Assignment
) -> CurrentAssignment:
    return CurrentAssignment(epoch, cur.member_epoch, int(state), assigned, revoking)


def preferred_assignor(choices: Iterable[str | None]) -> str:
    """The assignor named most often (ties: by name); the default when none is named."""
    counts = Counter(c for c in choices if c)
    if not counts:
        return DEFAULT_ASSIGNOR
    return min(counts, key=lambda name: (-counts[name], name))


def compile_regex(regex: str) -> re.Pattern[str]:
    """A subscription regex (Python ``re`` syntax, matched against whole topic names)."""
    try:
        return re.compile(regex)
    except re.error as e:
        raise GroupError(ErrorCode.invalid_regular_expression, f"SubscribedTopicRegex {regex!r}: {e}") from None


class ConsumerGroup:
    """One consumer group's state, changed only by ``replay``; ``heartbeat`` and friends compute records."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.group_epoch = 0
        self.assignment_epoch = 0
        self.members: dict[str, ConsumerMember] = {}
        self.static_members: dict[str, str] = {}
        """instance id -> member id"""
        self.target: dict[str, Assignment] = {}
        self.metadata: dict[str, TopicInfo] = {}
        """The subscribed topics as of the last group epoch bump (record 4), by name."""
        self._owners: dict[tuple[str, int], tuple[str, int]] = {}
        """partition -> (member id, member epoch) of the member holding it (assigned or revoking)."""
        self.dead = False
        """Being deleted (DeleteGroups): refuse heartbeats until the tombstones are applied."""
        self.timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        """(member id, "session" | "rebalance") -> the running timer (not persisted)."""
        self._subscribed: Counter[str] = Counter()
        self._regexes: Counter[str] = Counter()
        self._resolved: dict[str, tuple[int, frozenset[str]]] = {}

    # --- views ---------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """Empty, Assigning, Reconciling or Stable (as ConsumerGroupDescribe and ListGroups report it)."""
        if self.dead:
            return "Dead"
        if not self.members:
            return "Empty"
        if self.group_epoch != self.assignment_epoch:
            return "Assigning"
        for m in self.members.values():
            if m.cur.member_epoch != self.assignment_epoch or m.cur.state != MemberState.STABLE:
                return "Reconciling"
        return "Stable"

    def all_classic_except(self, member_id: str) -> bool:
        """Every member but ``member_id`` uses the classic protocol, and ``member_id`` does not."""
        member = self.members.get(member_id)
        return member is not None and not member.uses_classic and all(
            m.uses_classic for mid, m in self.members.items() if mid != member_id
        )

    def supports_classic_protocols(self, protocol_type: str, names: Iterable[str]) -> bool:
        """Whether a classic member offering ``names`` can join: the type is "consumer" and one of the names
        is offered by every classic member (any name while there are none)."""
        wanted = set(names)
        if protocol_type != CONSUMER or not wanted:
            return False
        for m in self.members.values():
            if m.sub.classic is not None:
                wanted &= {name for name, _ in m.sub.classic.protocols}
        return bool(wanted)

    def waiting_on_unreleased(self, member: ConsumerMember) -> bool:
        """The member is owed a partition of its target that another member still holds."""
        if member.state != MemberState.UNRELEASED_PARTITIONS:
            return False
        target = self.target.get(member.member_id, EMPTY)
        return any(self.owner_epoch(tp) != -1 for tp in target - member.cur.assigned)

    def owner_epoch(self, tp: tuple[str, int]) -> int:
        """The epoch of the member holding ``tp``, or -1 if no member does."""
        owner = self._owners.get(tp)
        return -1 if owner is None else owner[1]

    def preferred_assignor(self) -> str:
        """The server assignor most members asked for (ties: by name), else the default."""
        return preferred_assignor([m.sub.server_assignor for m in self.members.values()])

    def subscribed_counts(self) -> Counter[str]:
        """How many members subscribe to each topic name explicitly."""
        return self._subscribed

    def regex_counts(self) -> Counter[str]:
        """How many members subscribe with each regex."""
        return self._regexes

    def member_topics(self, sub: MemberSubscription, topics: TopicView) -> frozenset[str]:
        """Topic names a subscription covers: its names plus what its regex matches now."""
        names = frozenset(sub.subscribed_topic_names)
        if sub.subscribed_topic_regex:
            names |= self._resolve(sub.subscribed_topic_regex, topics)
        return names

    def _resolve(self, regex: str, topics: TopicView) -> frozenset[str]:
        cached = self._resolved.get(regex)
        if cached is not None and cached[0] == topics.generation:
            return cached[1]
        pattern = compile_regex(regex)
        found = frozenset(n for n in topics.names() if not n.startswith("__") and pattern.fullmatch(n))
        self._resolved[regex] = (topics.generation, found)
        return found

    # --- replay --------------------------------------------------------------------------------------
    def replay(self, record: ConsumerRecord) -> None:
        """Apply one durable record (also how the group is rebuilt on takeover)."""
        match record:
            case GroupEpochRecord(_, epoch):
                self.group_epoch = epoch or 0
            case SubscriptionMetadataRecord(_, topics):
                self.metadata = {t.name: t for t in topics or ()}
            case MemberSubscriptionRecord(_, member_id, sub):
                self._replay_subscription(member_id, sub)
            case TargetEpochRecord(_, epoch):
                self.assignment_epoch = epoch or 0
            case TargetMemberRecord(_, member_id, partitions):
                if partitions is None:
                    self.target.pop(member_id, None)
                else:
                    self.target[member_id] = partitions
            case CurrentAssignmentRecord(_, member_id, cur):
                self._replay_current(member_id, cur)

    def _replay_subscription(self, member_id: str, sub: MemberSubscription | None) -> None:
        old = self.members.get(member_id)
        if old is not None:
            self._subscribed.subtract(old.sub.subscribed_topic_names)
            if old.sub.subscribed_topic_regex:
                self._regexes[old.sub.subscribed_topic_regex] -= 1
            if old.sub.instance_id and self.static_members.get(old.sub.instance_id) == member_id:
                del self.static_members[old.sub.instance_id]
        if sub is None:
            if old is not None:
                self._release(member_id, old.cur)
                del self.members[member_id]
        else:
            self.members[member_id] = ConsumerMember(member_id, sub, old.cur if old else CurrentAssignment())
            self._subscribed.update(sub.subscribed_topic_names)
            if sub.subscribed_topic_regex:
                self._regexes[sub.subscribed_topic_regex] += 1
            if sub.instance_id:
                self.static_members[sub.instance_id] = member_id
        self._subscribed = +self._subscribed
        self._regexes = +self._regexes

    def _replay_current(self, member_id: str, cur: CurrentAssignment | None) -> None:
        old = self.members.get(member_id)
        if old is not None:
            self._release(member_id, old.cur)
        if cur is None:  # the member is on its way out; its subscription tombstone follows
            if old is not None:
                self.members[member_id] = replace(old, cur=CurrentAssignment(LEAVE_EPOCH, LEAVE_EPOCH))
            return
        self.members[member_id] = replace(old or ConsumerMember(member_id), cur=cur)
        for tp in cur.assigned | cur.pending_revocation:
            self._owners[tp] = (member_id, cur.member_epoch)

    def _release(self, member_id: str, cur: CurrentAssignment) -> None:
        for tp in cur.assigned | cur.pending_revocation:
            if self._owners.get(tp, ("",))[0] == member_id:
                del self._owners[tp]

    def snapshot(self) -> list[ConsumerRecord]:
        """Records that rebuild this group's live state, in replay order (for snapshots/compaction)."""
        g = self.group_id
        out: list[ConsumerRecord] = [GroupEpochRecord(g, self.group_epoch)]
        if self.metadata:
            out.append(SubscriptionMetadataRecord(g, tuple(self.metadata.values())))
        out.extend(MemberSubscriptionRecord(g, m.member_id, m.sub) for m in self.members.values())
        out.append(TargetEpochRecord(g, self.assignment_epoch))
        out.extend(TargetMemberRecord(g, mid, a) for mid, a in self.target.items())
        out.extend(CurrentAssignmentRecord(g, m.member_id, m.cur) for m in self.members.values())
        return out

    def tombstones(self) -> list[ConsumerRecord]:
        """Records that delete the group (DeleteGroups, or an empty group expiring)."""
        g = self.group_id
        out: list[ConsumerRecord] = []
        for mid in self.members:
            out += [CurrentAssignmentRecord(g, mid, None), TargetMemberRecord(g, mid, None)]
            out.append(MemberSubscriptionRecord(g, mid, None))
        out += [TargetEpochRecord(g, None), SubscriptionMetadataRecord(g, None), GroupEpochRecord(g, None)]
        return out

    # --- the coordinator's Group protocol -----------------------------------------------------------
    @property
    def group_type(self) -> str:
        return CONSUMER

    @property
    def state_name(self) -> str:
        return self.state

    @property
    def protocol_type(self) -> str:
        return CONSUMER

    def is_empty(self) -> bool:
        return not self.members

    def is_subscribed_to(self, topic: str) -> bool:
        return topic in self.metadata or topic in self._subscribed

    def topic_names(self) -> dict[str, str]:
        """Topic id -> name of the subscribed topics."""
        return {t.topic_id: t.name for t in self.metadata.values()}

    def describe(self) -> GroupDescription:
        """DescribeGroups' view: ConsumerProtocol v0 subscription and assignment bytes per member."""
        names = self.topic_names()
        members = tuple(
            DescribedMember(
                m.member_id, m.sub.instance_id, m.sub.client_id, m.sub.client_host,
                consumer_protocol_subscription(m.sub.subscribed_topic_names),
                consumer_protocol_assignment(m.cur.assigned, names),
            )
            for m in self.members.values()
        )
        return GroupDescription(self.state, CONSUMER, self.preferred_assignor(), members)

    def offset_expiry_base_ms(self, commit_timestamp_ms: int) -> int | None:
        return commit_timestamp_ms if not self.members else None

    def delete_records(self) -> list[tuple[bytes, bytes | None]]:
        return [encode(r) for r in self.tombstones()]

    def shutdown(self) -> None:
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()

    def mark_dead(self) -> None:
        """The group is being deleted: no timers, no heartbeats from now on."""
        self.shutdown()
        self.dead = True

    # --- offsets (called by the offset commit/fetch handlers for groups of this type) ----------------
    def validate_offset_commit(
        self, member_id: str, group_instance_id: str | None, member_epoch: int, api_version: int,
        transactional: bool = False,
    ) -> None:
        """OffsetCommit by a member: the member epoch stands in for the generation (KIP-848).

        Raises GroupError: UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH, or UNSUPPORTED_VERSION below v9.
        A commit with epoch < 0 and no member (admin tools, manual assignment) is accepted while the
        group is empty.
        """
        if member_epoch < 0 and not self.members:
            return
        if transactional and member_epoch < 0 and not member_id and group_instance_id is None:
            return  # TxnOffsetCommit v0-v2 name no member
        member = self.members.get(member_id)
        if member is None:
            raise GroupError(ErrorCode.unknown_member_id, f"member {member_id!r} is not in group {self.group_id!r}")
        if api_version < 9 and not member.uses_classic and not transactional:
            raise GroupError(
                ErrorCode.unsupported_version, "members of a consumer-protocol group must use OffsetCommit v9+"
            )
        _check_member_epoch(member, member_epoch)

    def validate_offset_fetch(self, member_id: str | None, member_epoch: int) -> None:
        """OffsetFetch v9+ naming a member: it must exist and carry its current epoch (else GroupError)."""
        if member_epoch < 0 and not member_id:
            return
        member = self.members.get(member_id or "")
        if member is None:
            raise GroupError(ErrorCode.unknown_member_id, f"member {member_id!r} is not in group {self.group_id!r}")
        _check_member_epoch(member, member_epoch)


def _check_member_epoch(member: ConsumerMember, epoch: int) -> None:
    """A classic member's generation is its member epoch (ILLEGAL_GENERATION), else STALE_MEMBER_EPOCH."""
    if epoch == member.epoch:
        return
    if member.uses_classic:
        raise GroupError(
            ErrorCode.illegal_generation,
            f"generation {epoch} of {member.member_id!r} is not its member epoch {member.epoch}",
        )
    raise GroupError(
        ErrorCode.stale_member_epoch,
        f"member epoch {epoch} of {member.member_id!r} is not its current epoch {member.epoch}",
    )


def consumer_protocol_subscription(topics: Iterable[str]) -> bytes:
    """ConsumerProtocolSubscription v0: the topics, no user data."""
    names = [t.encode() for t in topics]
    out = [struct.pack(">hi", 0, len(names))]
    out += [struct.pack(">h", len(n)) + n for n in names]
    out.append(struct.pack(">i", -1))
    return b"".join(out)


def consumer_protocol_assignment(assignment: Assignment, names: dict[str, str]) -> bytes:
    """ConsumerProtocolAssignment v0 of an assignment (topics by name; unknown topic ids left out)."""
    by_topic: dict[str, list[int]] = {}
    for tid, p in assignment:
        if tid in names:
            by_topic.setdefault(names[tid], []).append(p)
    out = [struct.pack(">hi", 0, len(by_topic))]
    for name in sorted(by_topic):
        raw = name.encode()
        parts = sorted(by_topic[name])
        out.append(struct.pack(">h", len(raw)) + raw + struct.pack(f">i{len(parts)}i", len(parts), *parts))
    out.append(struct.pack(">i", -1))
    return b"".join(out)
