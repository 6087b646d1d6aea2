"""KIP-848 online migration as pure computations: classic groups becoming consumer groups and back, and
classic members served inside a consumer group (Kafka 4's GroupMetadataManager rules).

* **Upgrade** (``upgrade_records``): a consumer-protocol member joining a non-empty classic group whose
  members use the embedded consumer protocol. The classic group's records are tombstoned and the consumer
  group is written as it stands: group epoch and target assignment epoch = the classic generation, every
  member Stable at that epoch with its last assignment as both current and target, its subscription from
  its JoinGroup metadata and its classic metadata (session timeout, protocols) kept. The joining member's
  heartbeat then bumps the epoch like any join.
* **Classic members of a consumer group** (``classic_join`` and friends): a JoinGroup runs the same
  steps as a heartbeat (subscription, epoch bump, target assignment, one reconciliation step against the
  partitions the member says it still owns); its generation is its member epoch; SyncGroup hands out its
  current assignment; Heartbeat answers REBALANCE_IN_PROGRESS whenever the member must rejoin to move on.
* **Downgrade** (``downgrade``): the last consumer-protocol member leaving (or fenced) while every other
  member is classic turns the group back into a classic group at the consumer group's epoch, each member's
  target assignment as its assignment; a rebalance follows.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from brokers.groups.assignors import Assignment
from brokers.groups.base import CONSUMER, GroupError, GroupStore
from brokers.groups.classic import ClassicGroup
from brokers.groups.consumer import ConsumerGroup, ConsumerGroupConfig, ConsumerMember, MemberState, TopicView
from brokers.groups.consumer_heartbeat import advance
from brokers.groups.consumer_protocol import (
    ProtocolFormatError,
    Subscription,
    parse_assignment,
    parse_subscription,
    serialize_assignment,
    version_of,
)
from brokers.groups.consumer_records import (
    ClassicMemberMetadata,
    ConsumerRecord,
    CurrentAssignment,
    CurrentAssignmentRecord,
    GroupEpochRecord,
    MemberSubscription,
    MemberSubscriptionRecord,
    TargetEpochRecord,
    TargetMemberRecord,
)
from brokers.groups.member import ClassicMember, JoinRequest


def _ids(pairs: list[tuple[str, int]] | tuple[tuple[str, int], ...], topics: TopicView) -> Assignment:
    """(topic name, partition) -> (topic id, partition); unknown topics and partitions are left out."""
    out = set()
    for name, p in pairs:
        t = topics.topic(name)
        if t is not None and 0 <= p < t.partitions:
            out.add((t.topic_id, p))
    return frozenset(out)


def _subscription(protocols: tuple[tuple[str, bytes], ...], preferred: str | None = None) -> Subscription:
    """The member's ConsumerProtocolSubscription (the chosen protocol's, else its first one's)."""
    chosen = next((md for name, md in protocols if name == preferred), None)
    if chosen is None and protocols:
        chosen = protocols[0][1]
    if chosen is None:
        raise ProtocolFormatError("no protocol")
    return parse_subscription(chosen)


# --- upgrade --------------------------------------------------------------------------------------------
def can_upgrade(classic: ClassicGroup, config: ConsumerGroupConfig) -> bool:
    """Kafka's validateOnlineUpgrade: allowed by the policy, the group uses the consumer protocol, not too big."""
    return (
        config.upgrade_enabled and classic.protocol_type == CONSUMER and len(classic.members) <= config.max_size
    )


def upgrade_records(classic: ClassicGroup, topics: TopicView) -> list[ConsumerRecord]:
    """The records that create the consumer group a classic group becomes (after its tombstone).

    Raises GroupError(GROUP_ID_NOT_FOUND) if a member's embedded protocol does not parse, as Kafka does.
    """
    g, epoch = classic.group_id, classic.generation
    subs: list[MemberSubscriptionRecord] = []
    targets: list[TargetMemberRecord] = []
    currents: list[CurrentAssignmentRecord] = []
    for m in classic.members.values():
        try:
            subscription = _subscription(m.protocols, classic.protocol_name)
            assigned = _ids(parse_assignment(m.assignment), topics)
        except ProtocolFormatError as e:
            raise GroupError(
                ErrorCode.group_id_not_found,
                f"cannot upgrade classic group {g!r}: member {m.member_id}'s consumer protocol is malformed ({e})",
            ) from None
        sub = MemberSubscription(
            instance_id=m.group_instance_id, rack_id=subscription.rack_id, client_id=m.client_id,
            client_host=m.client_host, subscribed_topic_names=subscription.topics,
            rebalance_timeout_ms=m.rebalance_timeout_ms,
            classic=ClassicMemberMetadata(m.session_timeout_ms, m.protocols),
        )
        subs.append(MemberSubscriptionRecord(g, m.member_id, sub))
        targets.append(TargetMemberRecord(g, m.member_id, assigned))
        currents.append(CurrentAssignmentRecord(
            g, m.member_id, CurrentAssignment(epoch, epoch, int(MemberState.STABLE), assigned)
        ))
    return [*subs, GroupEpochRecord(g, epoch), *targets, TargetEpochRecord(g, epoch), *currents]


# --- classic members inside a consumer group ----------------------------------------------------------
def check_join(group: ConsumerGroup, req: JoinRequest, member_id: str, config: ConsumerGroupConfig) -> None:
    """GROUP_MAX_SIZE_REACHED for a newcomer to a full group; INCONSISTENT_GROUP_PROTOCOL unless one of its
    protocols is offered by every classic member."""
    if len(group.members) >= config.max_size and member_id not in group.members:
        raise GroupError(
            ErrorCode.group_max_size_reached,
            f"group {group.group_id!r} has reached its maximum size of {config.max_size} members",
        )
    if not group.supports_classic_protocols(req.protocol_type, (name for name, _ in req.protocols)):
        raise GroupError(ErrorCode.inconsistent_group_protocol, f"member {member_id}'s protocols are not supported")


def classic_join(
    group: ConsumerGroup, req: JoinRequest, member_id: str, topics: TopicView
) -> tuple[list[ConsumerRecord], CurrentAssignment]:
    """A classic member's JoinGroup to a consumer group: records and the member's new state (its epoch is
    the generation it is given). ``member_id`` is the request's, or a new one when it had none."""
    records: list[ConsumerRecord] = []
    member, replaced = _classic_member(group, req, member_id, records)
    try:
        subscription = _subscription(req.protocols)
    except ProtocolFormatError as e:
        raise GroupError(ErrorCode.inconsistent_group_protocol, f"malformed consumer protocol: {e}") from None
    sub = MemberSubscription(
        instance_id=req.group_instance_id if req.group_instance_id is not None else member.sub.instance_id,
        rack_id=subscription.rack_id if subscription.rack_id is not None else member.sub.rack_id,
        client_id=req.client_id,
        client_host=req.client_host,
        subscribed_topic_names=subscription.topics,
        subscribed_topic_regex=member.sub.subscribed_topic_regex,
        rebalance_timeout_ms=req.rebalance_timeout_ms,
        server_assignor=member.sub.server_assignor,
        classic=ClassicMemberMetadata(req.session_timeout_ms, req.protocols),
    )
    cur = advance(group, member, member_id, replaced, sub, _ids(subscription.owned, topics), topics, records)
    return records, cur


def _classic_member(
    group: ConsumerGroup, req: JoinRequest, member_id: str, records: list[ConsumerRecord]
) -> tuple[ConsumerMember, str | None]:
    """The joining member (new ones start empty) and the static member it replaces, if any."""
    instance_id = req.group_instance_id
    if instance_id is None:
        return group.members.get(member_id) or ConsumerMember(member_id), None
    existing_id = group.static_members.get(instance_id)
    existing = group.members.get(existing_id) if existing_id else None
    if req.member_id:  # a known static member rejoining
        if existing is None:
            raise GroupError(ErrorCode.unknown_member_id, f"instance id {instance_id!r} is unknown")
        if existing.member_id != member_id:
            raise GroupError(
                ErrorCode.fenced_instance_id,
                f"instance id {instance_id!r} belongs to member {existing.member_id!r}, not {member_id!r}",
            )
        return existing, None
    if existing is None:
        return ConsumerMember(member_id), None
    # A static member restarting under a new member id takes over the old one's place and partitions.
    g, old = group.group_id, existing.member_id
    records += [CurrentAssignmentRecord(g, old, None), TargetMemberRecord(g, old, None)]
    records.append(MemberSubscriptionRecord(g, old, None))
    cur = CurrentAssignment(0, 0, existing.cur.state, existing.cur.assigned, existing.cur.pending_revocation)
    return ConsumerMember(member_id, existing.sub, cur), old


def classic_protocol_name(member: ConsumerMember) -> str:
    """The protocol a classic member was told in its JoinGroup answer: the first it offered."""
    classic = member.sub.classic
    return classic.protocols[0][0] if classic is not None and classic.protocols else ""


def sync_assignment(member: ConsumerMember, names: dict[str, str]) -> bytes:
    """A classic member's SyncGroup assignment: its current partitions in the version its metadata uses."""
    classic = member.sub.classic
    try:
        version = version_of(classic.protocols[0][1]) if classic is not None and classic.protocols else 0
    except ProtocolFormatError:
        version = 0
    return serialize_assignment(_names(member.cur.assigned, names), version)


def must_rejoin(group: ConsumerGroup, member: ConsumerMember) -> bool:
    """A classic member must rejoin to move on: the group epoch moved past it, it has partitions to revoke,
    or partitions it was waiting for are free now."""
    return (
        member.epoch < group.group_epoch
        or member.state == MemberState.UNREVOKED_PARTITIONS
        or (member.state == MemberState.UNRELEASED_PARTITIONS and not group.waiting_on_unreleased(member))
    )


def _names(assignment: Assignment, names: dict[str, str]) -> list[tuple[str, int]]:
    return [(names[tid], p) for tid, p in assignment if tid in names]


# --- downgrade ------------------------------------------------------------------------------------------
def can_downgrade(group: ConsumerGroup, leaving: str, config: ConsumerGroupConfig, *, fenced: bool = True) -> bool:
    """Kafka's validateOnlineDowngrade: ``leaving`` is the last consumer-protocol member and the others are
    classic; the group keeps a member; the policy allows it; the classic group would not be too big."""
    remaining = len(group.members) - 1 if fenced else len(group.members)
    return (
        group.all_classic_except(leaving)
        and remaining >= 1
        and config.downgrade_enabled
        and remaining <= config.classic_max_size
    )


def downgrade(
    group: ConsumerGroup, leaving: str, store: GroupStore, names: dict[str, str], joining: ClassicMember | None = None
) -> ClassicGroup:
    """The classic group ``group`` becomes without ``leaving`` (not yet installed: see
    ``ClassicGroup.start_after_downgrade``). Each member's assignment is its target assignment, serialised
    in the version of its metadata for the chosen protocol; a ``joining`` static member replacing
    ``leaving`` takes the leaving member's."""
    members = []
    for m in group.members.values():
        if m.member_id == leaving or m.sub.classic is None:
            continue
        members.append(ClassicMember(
            m.member_id, m.sub.instance_id, m.sub.client_id, m.sub.client_host, max(m.sub.rebalance_timeout_ms, 0),
            m.sub.classic.session_timeout_ms, CONSUMER, m.sub.classic.protocols,
        ))
    if joining is not None:
        members.append(joining)
    classic = ClassicGroup.downgraded(group.group_id, store, group.group_epoch, members)
    for cm in classic.members.values():
        try:
            version = version_of(cm.metadata(classic.protocol_name or ""))
        except ProtocolFormatError:
            version = 0
        source = leaving if joining is not None and cm is joining else cm.member_id
        target = group.target.get(source, frozenset())
        cm.assignment = serialize_assignment(_names(target, names), version)
    return classic
