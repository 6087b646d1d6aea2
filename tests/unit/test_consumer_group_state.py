"""The KIP-848 state machine on its own: epochs, fencing, revocation before assignment, static members, replay.

Only this module's collaborators are faked (a topic view); the group, records and assignors are real, and
every outcome is applied the way the coordinator applies it: records encoded, decoded and replayed.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from brokers.groups.assignors import Assignment, TopicInfo
from brokers.groups.base import GroupError
from brokers.groups.consumer import ConsumerGroup, ConsumerGroupConfig, Heartbeat, MemberState, Outcome
from brokers.groups.consumer_heartbeat import heartbeat, remove_members
from brokers.groups.consumer_records import decode, encode


class Topics:
    """A topic view over a dict; ``generation`` moves on every change, as the registry's does."""

    def __init__(self, **partitions: int) -> None:
        self.by_name: dict[str, TopicInfo] = {}
        self.generation = 0
        for name, n in partitions.items():
            self.set(name, n)

    def set(self, name: str, partitions: int) -> TopicInfo:
        old = self.by_name.get(name)
        t = TopicInfo(old.topic_id if old else str(uuid.uuid4()), name, partitions)
        self.by_name[name] = t
        self.generation += 1
        return t

    def topic(self, name: str) -> TopicInfo | None:
        return self.by_name.get(name)

    def names(self) -> Iterable[str]:
        return list(self.by_name)

    def tps(self, name: str, *ps: int) -> Assignment:
        return frozenset((self.by_name[name].topic_id, p) for p in ps)


CONFIG = ConsumerGroupConfig(heartbeat_interval_ms=100, session_timeout_ms=1000, max_size=4)


def apply(group: ConsumerGroup, outcome: Outcome) -> Outcome:
    for record in outcome.records:
        group.replay(decode(*encode(record)))
    return outcome


def beat(group: ConsumerGroup, topics: Topics, member: str, epoch: int, owned: Assignment | None = None,
         **kw: object) -> Outcome:
    hb = Heartbeat(member_id=member, member_epoch=epoch, owned=owned, client_id="c", client_host="/127.0.0.1",
                   **kw)  # type: ignore[arg-type]
    return apply(group, heartbeat(group, hb, topics, CONFIG, new_member_id=f"gen-{member}"))


def join(group: ConsumerGroup, topics: Topics, member: str, *names: str, **kw: object) -> Outcome:
    return beat(group, topics, member, 0, frozenset(), subscribed_topic_names=names, rebalance_timeout_ms=5000,
                **kw)


def test_first_member_gets_everything_at_epoch_one() -> None:
    topics, g = Topics(orders=3), ConsumerGroup("g")
    out = join(g, topics, "m1", "orders")
    assert (out.member_epoch, g.group_epoch, g.assignment_epoch) == (1, 1, 1)
    assert out.assignment == topics.tps("orders", 0, 1, 2)
    assert g.state == "Stable"
    again = beat(g, topics, "m1", 1, out.assignment)
    assert again.records == () and again.assignment is None, "an unchanged heartbeat writes and sends nothing"


def test_v0_member_id_is_generated_by_the_coordinator() -> None:
    topics, g = Topics(orders=1), ConsumerGroup("g")
    out = join(g, topics, "", "orders")
    assert out.member_id == "gen-" and out.member_id in g.members


def test_revocation_before_assignment() -> None:
    topics, g = Topics(orders=4), ConsumerGroup("g")
    a1 = join(g, topics, "m1", "orders").assignment
    assert a1 == topics.tps("orders", 0, 1, 2, 3)
    j2 = join(g, topics, "m2", "orders")
    assert g.group_epoch == 2 and g.assignment_epoch == 2
    # m2 is at the new epoch, but its partitions are still m1's: nothing yet.
    assert j2.member_epoch == 2 and j2.assignment == frozenset()
    assert g.members["m2"].state == MemberState.UNRELEASED_PARTITIONS
    assert g.state == "Reconciling"
    # m1 must revoke first and stays at epoch 1 meanwhile; its answer is what it keeps.
    r1 = beat(g, topics, "m1", 1, a1)
    assert r1.member_epoch == 1 and r1.revoking
    kept = r1.assignment
    assert kept is not None and len(kept) == 2 and kept < a1
    assert g.members["m1"].state == MemberState.UNREVOKED_PARTITIONS
    # Until m1 reports the revocation, m2 still gets nothing, and m1 heartbeating with them stays put.
    assert beat(g, topics, "m2", 2, frozenset()).assignment is None
    assert beat(g, topics, "m1", 1, a1).member_epoch == 1
    done = beat(g, topics, "m1", 1, kept)
    assert done.member_epoch == 2 and g.members["m1"].state == MemberState.STABLE
    got = beat(g, topics, "m2", 2, frozenset())
    assert got.assignment == a1 - kept
    assert g.state == "Stable"


def test_member_epoch_fencing() -> None:
    topics, g = Topics(orders=2), ConsumerGroup("g")
    a = join(g, topics, "m1", "orders").assignment
    with pytest.raises(GroupError) as e:
        beat(g, topics, "m1", 5, a)
    assert e.value.code == ErrorCode.fenced_member_epoch
    join(g, topics, "m2", "orders")
    r = beat(g, topics, "m1", 1, a)
    kept = r.assignment
    assert kept is not None
    beat(g, topics, "m1", 1, kept)  # -> epoch 2 (previous 1)
    assert g.members["m1"].epoch == 2
    # Our last answer was lost: the previous epoch with a subset of its partitions is accepted...
    assert beat(g, topics, "m1", 1, kept).member_epoch == 2
    # ...but not with partitions it no longer has, nor an older epoch.
    for epoch, owned in ((1, a), (1, None)):
        with pytest.raises(GroupError) as e:
            beat(g, topics, "m1", epoch, owned)
        assert e.value.code == ErrorCode.fenced_member_epoch
    with pytest.raises(GroupError) as e:
        beat(g, topics, "nobody", 3, frozenset())
    assert e.value.code == ErrorCode.unknown_member_id
    # A fenced member rejoins with epoch 0 and the same id (KAFKA-19233) and gets a full answer.
    back = beat(g, topics, "m1", 0, frozenset(), subscribed_topic_names=("orders",), rebalance_timeout_ms=5000)
    assert back.member_epoch == 2 and back.assignment == kept


def test_leave_rebalances_the_rest() -> None:
    topics, g = Topics(orders=4), ConsumerGroup("g")
    join(g, topics, "m1", "orders")
    join(g, topics, "m2", "orders")
    a1 = beat(g, topics, "m1", 1, topics.tps("orders", 0, 1, 2, 3)).assignment
    assert a1 is not None
    beat(g, topics, "m1", 1, a1)
    a2 = beat(g, topics, "m2", 2, frozenset()).assignment
    assert a2 is not None and g.state == "Stable"
    out = beat(g, topics, "m2", -1, None)
    assert out.member_epoch == -1 and "m2" not in g.members and g.group_epoch == 3
    back = beat(g, topics, "m1", 2, a1)
    assert back.member_epoch == 3 and back.assignment == topics.tps("orders", 0, 1, 2, 3)
    with pytest.raises(GroupError) as e:
        beat(g, topics, "m2", -1, None)
    assert e.value.code == ErrorCode.unknown_member_id


def test_session_expiry_records_remove_member_and_free_partitions() -> None:
    topics, g = Topics(orders=2), ConsumerGroup("g")
    a = join(g, topics, "m1", "orders").assignment
    assert a is not None
    apply(g, Outcome(tuple(remove_members(g, ["m1"], topics)), "m1", -1))
    assert g.members == {} and g.state == "Empty" and g.owner_epoch(next(iter(a))) == -1
    assert remove_members(g, ["m1"], topics) == []


def test_static_member_rejoins_with_same_partitions_without_rebalance() -> None:
    topics, g = Topics(orders=4), ConsumerGroup("g")
    join(g, topics, "s1", "orders", instance_id="i-1")
    join(g, topics, "s2", "orders", instance_id="i-2")
    a1 = beat(g, topics, "s1", 1, topics.tps("orders", 0, 1, 2, 3), instance_id="i-1").assignment
    assert a1 is not None
    beat(g, topics, "s1", 1, a1, instance_id="i-1")
    beat(g, topics, "s2", 2, frozenset(), instance_id="i-2")
    epoch = g.group_epoch
    # Still held: a second process with the same instance id is refused.
    with pytest.raises(GroupError) as e:
        join(g, topics, "s1-new", "orders", instance_id="i-1")
    assert e.value.code == ErrorCode.unreleased_instance_id
    with pytest.raises(GroupError) as e:
        beat(g, topics, "intruder", 2, frozenset(), instance_id="i-1")
    assert e.value.code == ErrorCode.fenced_instance_id
    # Temporary leave (-2), then a restart under a new member id: same partitions, same group epoch.
    assert beat(g, topics, "s1", -2, None, instance_id="i-1").member_epoch == -2
    back = join(g, topics, "s1-new", "orders", instance_id="i-1")
    assert back.assignment == a1 and back.member_epoch == epoch and g.group_epoch == epoch
    assert "s1" not in g.members and g.static_members["i-1"] == "s1-new"
    assert g.state == "Stable"


def test_group_max_size() -> None:
    topics, g = Topics(orders=8), ConsumerGroup("g")
    for i in range(CONFIG.max_size):
        join(g, topics, f"m{i}", "orders")
    with pytest.raises(GroupError) as e:
        join(g, topics, "one-too-many", "orders")
    assert e.value.code == ErrorCode.group_max_size_reached
    assert beat(g, topics, "m0", g.members["m0"].epoch, None).member_id == "m0"  # members carry on


def test_partitions_added_trigger_a_new_target_assignment() -> None:
    topics, g = Topics(orders=2), ConsumerGroup("g")
    a = join(g, topics, "m1", "orders").assignment
    topics.set("orders", 4)
    out = beat(g, topics, "m1", 1, a)
    assert g.group_epoch == 2 and out.member_epoch == 2
    assert out.assignment == topics.tps("orders", 0, 1, 2, 3)


def test_topic_created_after_subscribing_and_regex_subscriptions() -> None:
    topics, g = Topics(), ConsumerGroup("g")
    out = join(g, topics, "m1", "later")
    assert out.assignment == frozenset()
    topics.set("later", 2)
    assert beat(g, topics, "m1", out.member_epoch, frozenset()).assignment == topics.tps("later", 0, 1)
    topics.set("pay-eu", 1)
    topics.set("pay-us", 1)
    topics.set("other", 1)
    r = beat(g, topics, "m2", 0, frozenset(), subscribed_topic_regex="pay-.*", rebalance_timeout_ms=5000)
    assert r.assignment == topics.tps("pay-eu", 0) | topics.tps("pay-us", 0)
    with pytest.raises(GroupError) as e:
        beat(g, topics, "m3", 0, frozenset(), subscribed_topic_regex="(", rebalance_timeout_ms=5000)
    assert e.value.code == ErrorCode.invalid_regular_expression


def test_unsupported_assignor_and_range_selection() -> None:
    topics, g = Topics(orders=4), ConsumerGroup("g")
    with pytest.raises(GroupError) as e:
        join(g, topics, "m1", "orders", server_assignor="cooperative-sticky")
    assert e.value.code == ErrorCode.unsupported_assignor
    join(g, topics, "m1", "orders", server_assignor="range")
    assert g.preferred_assignor() == "range"


def test_offset_commit_and_fetch_use_the_member_epoch() -> None:
    topics, g = Topics(orders=1), ConsumerGroup("g")
    g.validate_offset_commit("", None, -1, 9)  # empty group: anyone may commit
    join(g, topics, "m1", "orders")
    g.validate_offset_commit("m1", None, 1, 9)
    cases = [("m1", 0, 9, ErrorCode.stale_member_epoch), ("zz", 1, 9, ErrorCode.unknown_member_id),
             ("m1", 1, 8, ErrorCode.unsupported_version), ("", -1, 9, ErrorCode.unknown_member_id)]
    for member, epoch, version, code in cases:
        with pytest.raises(GroupError) as e:
            g.validate_offset_commit(member, None, epoch, version)
        assert e.value.code == code, (member, epoch, version)
    g.validate_offset_fetch("m1", 1)
    g.validate_offset_fetch(None, -1)
    with pytest.raises(GroupError) as e:
        g.validate_offset_fetch("m1", 7)
    assert e.value.code == ErrorCode.stale_member_epoch


def test_snapshot_rebuilds_the_same_group() -> None:
    topics, g = Topics(orders=5, audit=2), ConsumerGroup("g")
    join(g, topics, "m1", "orders", "audit")
    join(g, topics, "m2", "orders", instance_id="i-2")
    beat(g, topics, "m1", 1, topics.tps("orders", 0, 1, 2, 3, 4) | topics.tps("audit", 0, 1))
    copy = ConsumerGroup("g")
    for record in g.snapshot():
        copy.replay(decode(*encode(record)))
    assert copy.members == g.members and copy.target == g.target and copy.metadata == g.metadata
    assert (copy.group_epoch, copy.assignment_epoch, copy.static_members) == (
        g.group_epoch, g.assignment_epoch, g.static_members)
    assert all(copy.owner_epoch(tp) == g.owner_epoch(tp) for tp in topics.tps("orders", 0, 1, 2, 3, 4))
    assert copy.state == g.state
    gone = ConsumerGroup("g")
    for record in g.snapshot() + g.tombstones():
        gone.replay(record)
    assert gone.members == {} and gone.target == {} and gone.group_epoch == 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), partitions=st.integers(1, 12), assignor=st.sampled_from(["uniform", "range"]))
def test_property_no_partition_is_ever_owned_twice_and_the_group_converges(
    seed: int, partitions: int, assignor: str
) -> None:
    """Clients that obey the protocol join, heartbeat, leave and lose answers at random: at no point do two
    clients own one partition, and once they only heartbeat, every partition ends up owned exactly once."""
    rnd = random.Random(seed)
    topics, g = Topics(t=partitions), ConsumerGroup("g")
    owned: dict[str, Assignment] = {}
    epochs: dict[str, int] = {}
    lost: set[str] = set()

    def step(member: str, lossy: bool = True) -> None:
        try:
            if member not in epochs:
                out = join(g, topics, member, "t", server_assignor=assignor)
            elif member in lost:  # after an error a client sends a full request
                lost.discard(member)
                out = beat(g, topics, member, epochs[member], owned[member], subscribed_topic_names=("t",),
                           rebalance_timeout_ms=5000)
            else:
                out = beat(g, topics, member, epochs[member], owned[member])
        except GroupError as e:
            # Fenced (several answers lost in a row): the client drops its partitions and rejoins.
            assert e.code == ErrorCode.fenced_member_epoch, e
            owned[member] = frozenset()
            out = join(g, topics, member, "t", server_assignor=assignor)
        if lossy and rnd.random() < 0.15 and member in epochs:
            lost.add(member)
            return  # the answer is lost: the client keeps its epoch and partitions
        epochs[member] = out.member_epoch
        if out.assignment is not None:
            owned[member] = out.assignment
        owned.setdefault(member, frozenset())
        seen = [tp for a in owned.values() for tp in a]
        assert len(seen) == len(set(seen)), f"a partition is owned twice: {owned}"

    names = [f"m{i}" for i in range(rnd.randint(1, CONFIG.max_size - 1))]
    for _ in range(60):
        member = rnd.choice([*names, "leaver"])
        if member == "leaver" and "leaver" in epochs and rnd.random() < 0.5:
            beat(g, topics, "leaver", -1, None)
            del epochs["leaver"], owned["leaver"]
            lost.discard("leaver")
        else:
            step(member)
    for _ in range(20):  # answers are no longer lost
        for member in list(epochs):
            step(member, lossy=False)
    assert g.state == "Stable"
    seen = sorted(tp for a in owned.values() for tp in a)
    assert seen == sorted(topics.tps("t", *range(partitions)))
