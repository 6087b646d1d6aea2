"""ConsumerGroupHeartbeat as a pure computation: a group's state and a request in, records and an answer out.

Nothing here changes the group; the caller writes ``Outcome.records`` and replays them (consumer.py).
The steps are Kafka's (GroupMetadataManager.consumerGroupHeartbeat): find or create the member and check
its epoch; record a changed subscription; bump the group epoch when membership, subscriptions or the
subscribed topics' metadata changed; compute a new target assignment when the group epoch is ahead of
it; move the member one step towards its target; answer with its epoch and, when it changed or the
request was a full one, its assignment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from kio.schema.errors import ErrorCode

from brokers.groups.assignors import ASSIGNORS, EMPTY, Assignment, MemberSpec, TopicInfo
from brokers.groups.base import GroupError
from brokers.groups.consumer import (
    LEAVE_EPOCH,
    LEAVE_STATIC_EPOCH,
    ConsumerGroup,
    ConsumerGroupConfig,
    ConsumerMember,
    Heartbeat,
    MemberState,
    Outcome,
    TopicView,
    compile_regex,
    preferred_assignor,
    reconcile,
)
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
)


def heartbeat(
    group: ConsumerGroup, hb: Heartbeat, topics: TopicView, config: ConsumerGroupConfig, new_member_id: str
) -> Outcome:
    """Compute one heartbeat; raises GroupError. ``new_member_id`` is used when the request has none (v0)."""
    if hb.member_epoch in (LEAVE_EPOCH, LEAVE_STATIC_EPOCH):
        return leave(group, hb, topics)
    if hb.server_assignor is not None and hb.server_assignor not in ASSIGNORS:
        raise GroupError(
            ErrorCode.unsupported_assignor,
            f"ServerAssignor {hb.server_assignor!r} is not supported; supported: {', '.join(sorted(ASSIGNORS))}",
        )
    # A static member taking over its instance id does not grow the group (Kafka counts it as new).
    replacing = hb.instance_id is not None and hb.instance_id in group.static_members
    if len(group.members) >= config.max_size and hb.member_id not in group.members and not replacing:
        raise GroupError(
            ErrorCode.group_max_size_reached,
            f"group {group.group_id!r} has reached its maximum size of {config.max_size} members",
        )
    member_id = hb.member_id or new_member_id
    records: list[ConsumerRecord] = []
    member, replaced = _member_for(group, hb, member_id, records)
    is_new = member_id not in group.members
    sub = _updated(member.sub, hb)
    cur = advance(group, member, member_id, replaced, sub, hb.owned, topics, records)
    named = hb.subscribed_topic_names is not None or hb.subscribed_topic_regex is not None
    full = hb.member_epoch == 0 or (hb.rebalance_timeout_ms != -1 and named and hb.owned is not None)
    before = EMPTY if is_new and replaced is None else member.cur.assigned
    return Outcome(
        records=tuple(records),
        member_id=member_id,
        member_epoch=cur.member_epoch,
        assignment=cur.assigned if full or cur.assigned != before else None,
        revoking=cur.state == MemberState.UNREVOKED_PARTITIONS,
        rebalance_timeout_ms=sub.rebalance_timeout_ms,
    )


def advance(
    group: ConsumerGroup,
    member: ConsumerMember,
    member_id: str,
    replaced: str | None,
    sub: MemberSubscription,
    owned: Assignment | None,
    topics: TopicView,
    records: list[ConsumerRecord],
) -> CurrentAssignment:
    """The member's changed subscription, a group epoch bump and new target assignment if due, and one
    reconciliation step, as records appended to ``records``; returns the member's new state. Shared by
    ConsumerGroupHeartbeat and by classic members' JoinGroup (KIP-848 online migration)."""
    g = group.group_id
    is_new = member_id not in group.members
    bump = group.group_epoch == 0
    if sub != member.sub or is_new:
        records.append(MemberSubscriptionRecord(g, member_id, sub))
        if sub.subscribed_topic_regex and sub.subscribed_topic_regex != member.sub.subscribed_topic_regex:
            compile_regex(sub.subscribed_topic_regex)
        bump |= (is_new and replaced is None) or (
            sub.subscribed_topic_names != member.sub.subscribed_topic_names
            or sub.subscribed_topic_regex != member.sub.subscribed_topic_regex
        )
    gone = {member_id} if replaced is None else {member_id, replaced}
    metadata = _metadata(group, _subscribed_names(group, gone, [sub], topics), topics)
    if metadata != group.metadata:
        records.append(SubscriptionMetadataRecord(g, tuple(metadata.values())))
        bump = True
    epoch = group.group_epoch + 1 if bump else group.group_epoch
    if bump:
        records.append(GroupEpochRecord(g, epoch))
    previous_target = group.target.get(member_id, group.target.get(replaced, EMPTY) if replaced else EMPTY)
    if epoch > group.assignment_epoch:
        targets = _assign(group, member_id, sub, previous_target, gone, metadata, topics)
        for mid, assignment in targets.items():
            if group.target.get(mid) != assignment or mid == member_id:
                records.append(TargetMemberRecord(g, mid, assignment))
        records.append(TargetEpochRecord(g, epoch))
        target_epoch, target = epoch, targets[member_id]
    else:
        target_epoch, target = group.assignment_epoch, previous_target
        if replaced is not None:
            records.append(TargetMemberRecord(g, member_id, target))
    cur = reconcile(member.cur, target_epoch, target, group.owner_epoch, owned)
    if cur != member.cur or is_new:
        records.append(CurrentAssignmentRecord(g, member_id, cur))
    return cur


def leave(group: ConsumerGroup, hb: Heartbeat, topics: TopicView) -> Outcome:
    """Epoch -1: the member leaves (a rebalance follows); -2: a static member steps away, keeping its place."""
    member = _existing(group, hb)
    if hb.member_epoch == LEAVE_STATIC_EPOCH:
        cur = replace(member.cur, member_epoch=LEAVE_STATIC_EPOCH, pending_revocation=EMPTY)
        record = CurrentAssignmentRecord(group.group_id, member.member_id, cur)
        return Outcome((record,), member.member_id, LEAVE_STATIC_EPOCH)
    return Outcome(tuple(remove_members(group, [member.member_id], topics)), member.member_id, LEAVE_EPOCH)


def remove_members(group: ConsumerGroup, member_ids: Iterable[str], topics: TopicView) -> list[ConsumerRecord]:
    """Records that remove members (leave, session or rebalance timeout) and bump the group epoch."""
    g = group.group_id
    gone = {m for m in member_ids if m in group.members}
    if not gone:
        return []
    records: list[ConsumerRecord] = []
    for mid in sorted(gone):
        records += [CurrentAssignmentRecord(g, mid, None), TargetMemberRecord(g, mid, None)]
        records.append(MemberSubscriptionRecord(g, mid, None))
    metadata = _metadata(group, _subscribed_names(group, gone, [], topics), topics)
    if metadata != group.metadata:
        records.append(SubscriptionMetadataRecord(g, tuple(metadata.values())))
    records.append(GroupEpochRecord(g, group.group_epoch + 1))
    return records


def _member_for(
    group: ConsumerGroup, hb: Heartbeat, member_id: str, records: list[ConsumerRecord]
) -> tuple[ConsumerMember, str | None]:
    """The member this heartbeat is from (new ones start empty) and the static member it replaces, if any."""
    if hb.instance_id is None:
        member = group.members.get(member_id)
        if member is None:
            if hb.member_epoch != 0:
                raise GroupError(ErrorCode.unknown_member_id, f"member {member_id!r} is not in the group")
            return ConsumerMember(member_id), None
        _check_epoch(member, hb)
        return member, None
    existing_id = group.static_members.get(hb.instance_id)
    existing = group.members.get(existing_id) if existing_id else None
    if hb.member_epoch != 0:
        if existing is None:
            raise GroupError(ErrorCode.unknown_member_id, f"instance id {hb.instance_id!r} is unknown")
        if existing.member_id != member_id:
            raise GroupError(
                ErrorCode.fenced_instance_id,
                f"instance id {hb.instance_id!r} belongs to member {existing.member_id!r}, not {member_id!r}",
            )
        _check_epoch(existing, hb)
        return existing, None
    if existing is None:
        return group.members.get(member_id) or ConsumerMember(member_id), None
    if existing.member_id == member_id:
        return existing, None
    if existing.epoch != LEAVE_STATIC_EPOCH and not existing.uses_classic:  # a classic one is replaced at once
        raise GroupError(
            ErrorCode.unreleased_instance_id,
            f"instance id {hb.instance_id!r} is still held by member {existing.member_id!r}",
        )
    # A static member comes back under a new member id: it takes over the old one's place and partitions.
    g, old = group.group_id, existing.member_id
    records += [CurrentAssignmentRecord(g, old, None), TargetMemberRecord(g, old, None)]
    records.append(MemberSubscriptionRecord(g, old, None))
    cur = replace(existing.cur, member_epoch=0, previous_member_epoch=0)
    return ConsumerMember(member_id, existing.sub, cur), old


def _existing(group: ConsumerGroup, hb: Heartbeat) -> ConsumerMember:
    if hb.instance_id is not None:
        member_id = group.static_members.get(hb.instance_id)
        if member_id is None:
            raise GroupError(ErrorCode.unknown_member_id, f"instance id {hb.instance_id!r} is unknown")
        if member_id != hb.member_id:
            raise GroupError(
                ErrorCode.fenced_instance_id,
                f"instance id {hb.instance_id!r} belongs to member {member_id!r}, not {hb.member_id!r}",
            )
    member = group.members.get(hb.member_id)
    if member is None:
        raise GroupError(ErrorCode.unknown_member_id, f"member {hb.member_id!r} is not in the group")
    return member


def _check_epoch(member: ConsumerMember, hb: Heartbeat) -> None:
    """FENCED_MEMBER_EPOCH unless the epoch is the member's, 0 (a rejoin), or its previous one with a
    subset of its partitions (our last answer was lost)."""
    got, have = hb.member_epoch, member.epoch
    if got == 0 or got == have:
        return
    lost_answer = (
        got == member.cur.previous_member_epoch and hb.owned is not None and hb.owned <= member.cur.assigned
    )
    if got > have or not lost_answer:
        raise GroupError(
            ErrorCode.fenced_member_epoch,
            f"member epoch {got} does not match the coordinator's {have}; the member must rejoin",
        )


def _updated(sub: MemberSubscription, hb: Heartbeat) -> MemberSubscription:
    return MemberSubscription(
        instance_id=hb.instance_id if hb.instance_id is not None else sub.instance_id,
        rack_id=hb.rack_id if hb.rack_id is not None else sub.rack_id,
        client_id=hb.client_id,
        client_host=hb.client_host,
        subscribed_topic_names=(
            hb.subscribed_topic_names if hb.subscribed_topic_names is not None else sub.subscribed_topic_names
        ),
        subscribed_topic_regex=(
            (hb.subscribed_topic_regex or None) if hb.subscribed_topic_regex is not None
            else sub.subscribed_topic_regex
        ),
        rebalance_timeout_ms=hb.rebalance_timeout_ms if hb.rebalance_timeout_ms != -1 else sub.rebalance_timeout_ms,
        server_assignor=hb.server_assignor if hb.server_assignor is not None else sub.server_assignor,
        classic=None,  # a ConsumerGroupHeartbeat means the member now speaks the consumer protocol
    )


def _subscribed_names(
    group: ConsumerGroup, without: set[str], extra: list[MemberSubscription], topics: TopicView
) -> set[str]:
    """Every topic name the group subscribes to, with the members ``without`` left out and ``extra`` in."""
    names = dict(group.subscribed_counts())
    regexes = dict(group.regex_counts())
    for mid in without:
        m = group.members.get(mid)
        if m is None:
            continue
        for n in m.sub.subscribed_topic_names:
            names[n] -= 1
        if m.sub.subscribed_topic_regex:
            regexes[m.sub.subscribed_topic_regex] -= 1
    out = {n for n, c in names.items() if c > 0}
    for s in extra:
        out.update(s.subscribed_topic_names)
        if s.subscribed_topic_regex:
            regexes[s.subscribed_topic_regex] = regexes.get(s.subscribed_topic_regex, 0) + 1
    for regex, count in regexes.items():
        if count > 0:
            out |= group.member_topics(MemberSubscription(subscribed_topic_regex=regex), topics)
    return out


def _metadata(group: ConsumerGroup, names: set[str], topics: TopicView) -> dict[str, TopicInfo]:
    out = {}
    for name in sorted(names):
        t = topics.topic(name)
        if t is not None:
            out[name] = t
    return out


def _assign(
    group: ConsumerGroup,
    member_id: str,
    sub: MemberSubscription,
    previous: Assignment,
    gone: set[str],
    metadata: dict[str, TopicInfo],
    topics: TopicView,
) -> dict[str, Assignment]:
    """The new target of every member, by the assignor most members prefer."""
    by_name = {t.name: t.topic_id for t in metadata.values()}

    def spec(s: MemberSubscription, current: Assignment) -> MemberSpec:
        ids = frozenset(by_name[n] for n in group.member_topics(s, topics) if n in by_name)
        return MemberSpec(ids, current)

    specs = {mid: spec(m.sub, group.target.get(mid, EMPTY)) for mid, m in group.members.items() if mid not in gone}
    specs[member_id] = spec(sub, previous)
    choices = [m.sub.server_assignor for mid, m in group.members.items() if mid not in gone]
    name = preferred_assignor([*choices, sub.server_assignor])
    return ASSIGNORS[name].assign(specs, {t.topic_id: t for t in metadata.values()})

