"""The server-side assignors of KIP-848 groups: validity, balance, stickiness and range semantics."""

from __future__ import annotations

import uuid
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.groups.assignors import (
    ASSIGNORS,
    DEFAULT_ASSIGNOR,
    Assignment,
    MemberSpec,
    RangeAssignor,
    TopicInfo,
    UniformAssignor,
)

A = TopicInfo(str(uuid.UUID(int=1)), "alpha", 6)
B = TopicInfo(str(uuid.UUID(int=2)), "beta", 6)
C = TopicInfo(str(uuid.UUID(int=3)), "gamma", 7)
TOPICS = {t.topic_id: t for t in (A, B, C)}


def parts(topic: TopicInfo, *ps: int) -> Assignment:
    return frozenset((topic.topic_id, p) for p in ps)


def check_valid(result: dict[str, Assignment], members: dict[str, MemberSpec], topics: dict[str, TopicInfo]) -> None:
    """Every subscribed partition is assigned exactly once, and only to a member subscribed to its topic."""
    seen = Counter(tp for a in result.values() for tp in a)
    assert all(n == 1 for n in seen.values()), f"assigned twice: {[tp for tp, n in seen.items() if n > 1]}"
    subscribed = {tid for m in members.values() for tid in m.topic_ids if tid in topics}
    expected = {(tid, p) for tid in subscribed for p in range(topics[tid].partitions)}
    assert set(seen) == expected
    for mid, a in result.items():
        assert all(tid in members[mid].topic_ids for tid, _ in a), mid


def test_registry_names_and_default() -> None:
    assert set(ASSIGNORS) == {"uniform", "range"}
    assert DEFAULT_ASSIGNOR == "uniform"
    assert all(name == a.name for name, a in ASSIGNORS.items())


def test_uniform_fresh_assignment_is_balanced() -> None:
    members = {m: MemberSpec(frozenset({A.topic_id})) for m in ("m1", "m2", "m3")}
    result = UniformAssignor().assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    assert sorted(len(a) for a in result.values()) == [2, 2, 2]


def test_uniform_member_joining_only_takes_from_members_above_their_share() -> None:
    before = {"m1": parts(A, 0, 1), "m2": parts(A, 2, 3), "m3": parts(A, 4, 5)}
    members = {m: MemberSpec(frozenset({A.topic_id}), a) for m, a in before.items()}
    members["m4"] = MemberSpec(frozenset({A.topic_id}))
    result = UniformAssignor().assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    assert sorted(len(a) for a in result.values()) == [1, 1, 2, 2]
    for m, prev in before.items():
        assert result[m] <= prev, f"{m} was given partitions it did not have: {result[m] - prev}"
        assert prev - result[m] <= result["m4"], f"{m} lost partitions that did not go to the new member"
    moved = sum(len(prev - result[m]) for m, prev in before.items())
    assert moved == 1 or moved == 2
    assert moved == len(result["m4"])


def test_uniform_member_leaving_keeps_everyone_elses_partitions() -> None:
    before = {"m1": parts(A, 0, 1) | parts(B, 0), "m2": parts(A, 2, 3) | parts(B, 1, 2), "m3": parts(A, 4, 5)
              | parts(B, 3, 4, 5)}
    members = {m: MemberSpec(frozenset({A.topic_id, B.topic_id}), a) for m, a in before.items() if m != "m3"}
    result = UniformAssignor().assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    assert result["m1"] >= before["m1"] and result["m2"] >= before["m2"]
    assert sorted(len(a) for a in result.values()) == [6, 6]


def test_uniform_heterogeneous_subscriptions() -> None:
    members = {
        "m1": MemberSpec(frozenset({A.topic_id, B.topic_id})),
        "m2": MemberSpec(frozenset({B.topic_id})),
        "m3": MemberSpec(frozenset({C.topic_id})),
    }
    result = UniformAssignor().assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    assert len(result["m3"]) == 7
    assert len(result["m1"]) == 6 and len(result["m2"]) == 6  # 12 partitions of A+B; m2 can only take B


def test_uniform_drops_stale_and_duplicate_previous_partitions() -> None:
    gone = TopicInfo(str(uuid.UUID(int=9)), "gone", 3)
    members = {
        "m1": MemberSpec(frozenset({A.topic_id}), parts(A, 0, 1, 9) | parts(gone, 0)),
        "m2": MemberSpec(frozenset({A.topic_id}), parts(A, 1, 2)),  # 1 is claimed twice: m1 (first) keeps it
    }
    result = UniformAssignor().assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    assert parts(A, 0, 1) <= result["m1"] and parts(A, 2) <= result["m2"]


def test_range_fresh_assignment_is_contiguous_and_copartitioned() -> None:
    members = {m: MemberSpec(frozenset({A.topic_id, C.topic_id})) for m in ("m1", "m2", "m3")}
    result = RangeAssignor().assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    assert result["m1"] == parts(A, 0, 1) | parts(C, 0, 1, 2)  # 7 over 3: the first member takes the extra
    assert result["m2"] == parts(A, 2, 3) | parts(C, 3, 4)
    assert result["m3"] == parts(A, 4, 5) | parts(C, 5, 6)
    members2 = {m: MemberSpec(frozenset({A.topic_id, B.topic_id})) for m in ("m1", "m2", "m3", "m4")}
    result2 = RangeAssignor().assign(members2, TOPICS)
    for m in members2:  # equal partition counts: the same partition numbers of both topics
        assert {p for t, p in result2[m] if t == A.topic_id} == {p for t, p in result2[m] if t == B.topic_id}


def test_range_assigns_each_topic_over_its_own_subscribers() -> None:
    members = {"m1": MemberSpec(frozenset({A.topic_id, B.topic_id})), "m2": MemberSpec(frozenset({A.topic_id}))}
    result = RangeAssignor().assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    assert result["m1"] == parts(A, 0, 1, 2) | parts(B, 0, 1, 2, 3, 4, 5)
    assert result["m2"] == parts(A, 3, 4, 5)


def test_range_is_sticky_when_a_member_joins() -> None:
    before = {"m1": parts(A, 0, 1), "m2": parts(A, 2, 3), "m3": parts(A, 4, 5)}
    members = {m: MemberSpec(frozenset({A.topic_id}), a) for m, a in before.items()}
    members["m0"] = MemberSpec(frozenset({A.topic_id}))  # sorts first: a fresh range would shift everyone
    result = RangeAssignor().assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    for m, prev in before.items():
        assert result[m] <= prev
        assert prev - result[m] <= result["m0"]
    assert sorted(len(a) for a in result.values()) == [1, 1, 2, 2]


topic_sets = st.lists(st.sampled_from([A.topic_id, B.topic_id, C.topic_id]), min_size=0, max_size=3).map(frozenset)


@st.composite
def groups(draw: st.DrawFn, homogeneous: bool) -> dict[str, MemberSpec]:
    n = draw(st.integers(1, 8))
    shared = draw(topic_sets.filter(bool))
    all_tps = [(t.topic_id, p) for t in TOPICS.values() for p in range(t.partitions + 2)]  # some stale
    members = {}
    for i in range(n):
        topics = shared if homogeneous else draw(topic_sets)
        current = frozenset(draw(st.lists(st.sampled_from(all_tps), max_size=10)))
        members[f"m{i:02d}"] = MemberSpec(topics, current)
    return members


@settings(max_examples=150, deadline=None)
@given(members=groups(homogeneous=True), name=st.sampled_from(["uniform", "range"]))
def test_property_homogeneous_valid_balanced_sticky(members: dict[str, MemberSpec], name: str) -> None:
    result = ASSIGNORS[name].assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    n = len(members)
    subscribed = next(iter(members.values())).topic_ids
    if name == "uniform":
        total = sum(TOPICS[t].partitions for t in subscribed)
        floor = total // n
        sizes = [len(a) for a in result.values()]
        assert max(sizes) - min(sizes) <= 1
        for mid, spec in members.items():  # everyone keeps its valid partitions up to its share
            valid = {tp for tp in spec.current if tp[0] in subscribed and tp[1] < TOPICS[tp[0]].partitions}
            claimed_first = {tp for tp in valid if all(tp not in members[o].current for o in members if o < mid)}
            assert len(result[mid] & claimed_first) >= min(len(claimed_first), floor)
    else:
        for t in subscribed:
            sizes = [sum(1 for tid, _ in a if tid == t) for a in result.values()]
            assert max(sizes) - min(sizes) <= 1


@settings(max_examples=150, deadline=None)
@given(members=groups(homogeneous=False), name=st.sampled_from(["uniform", "range"]))
def test_property_heterogeneous_valid(members: dict[str, MemberSpec], name: str) -> None:
    result = ASSIGNORS[name].assign(members, TOPICS)
    check_valid(result, members, TOPICS)
    assert set(result) == set(members)
    assert ASSIGNORS[name].assign(members, TOPICS) == result  # deterministic
