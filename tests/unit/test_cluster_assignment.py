"""The controller's partition assignment (brokers/cluster/assignment.py): validity, balance, stickiness,
determinism, and load balancing, by example and by hypothesis properties."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.cluster.assignment import PartitionSpec, TopicPartition, assign, by_topic, moves


def specs(**topics: int) -> list[PartitionSpec]:
    return [PartitionSpec(t, p) for t, n in sorted(topics.items()) for p in range(n)]


def check_balanced(result: Mapping[TopicPartition, int], brokers: list[int], partitions: list[PartitionSpec]) -> None:
    """Every partition on a live broker; totals and every topic's counts spread by at most one."""
    assert set(result) == {p.tp for p in partitions}
    assert set(result.values()) <= set(brokers)
    totals = Counter({b: 0 for b in brokers}) + Counter(result.values())
    counts = [totals.get(b, 0) for b in brokers]
    assert max(counts) - min(counts) <= 1, counts
    for topic in {p.topic_id for p in partitions}:
        per = Counter(b for (t, _), b in result.items() if t == topic)
        spread = [per.get(b, 0) for b in brokers]
        assert max(spread) - min(spread) <= 1, (topic, spread)


def imbalance(current: Mapping[TopicPartition, int], brokers: list[int], partitions: list[PartitionSpec]) -> int:
    """How far ``current`` is from the bounds: partitions above each broker's ceiling plus places missing below
    its floor, in total and per topic. Any balanced result must move at least a part of this."""
    live = set(brokers)
    wanted = {p.tp for p in partitions}
    held = {tp: b for tp, b in current.items() if b in live and tp in wanted}

    def off(count: int, n: int) -> int:
        return max(0, count - math.ceil(n / len(live))) + max(0, n // len(live) - count)

    totals = Counter(held.values())
    per_topic = Counter(p.topic_id for p in partitions)
    topic_counts = Counter((tp[0], b) for tp, b in held.items())
    return sum(off(totals[b], len(partitions)) for b in live) + sum(
        off(topic_counts[(t, b)], n) for t, n in per_topic.items() for b in live
    )


# --- examples -------------------------------------------------------------------------------------------
def test_fresh_assignment_spreads_a_topic_and_the_offsets_topic() -> None:
    partitions = specs(events=12, __consumer_offsets=50)
    result = assign([1, 2, 3], partitions, {})
    check_balanced(result, [1, 2, 3], partitions)
    assert Counter(b for (t, _), b in result.items() if t == "events") == {1: 4, 2: 4, 3: 4}


def test_a_joining_broker_takes_only_its_share() -> None:
    partitions = specs(events=12, __consumer_offsets=50)
    before = assign([1, 2, 3], partitions, {})
    after = assign([1, 2, 3, 4], partitions, before)
    check_balanced(after, [1, 2, 3, 4], partitions)
    gained = sum(1 for b in after.values() if b == 4)
    assert moves(before, after) == gained == 62 // 4  # every move goes to the new broker


def test_a_leaving_brokers_partitions_are_spread_and_nothing_else_moves() -> None:
    partitions = specs(events=12, __consumer_offsets=50)
    before = assign([1, 2, 3], partitions, {})
    after = assign([1, 2], partitions, before)
    check_balanced(after, [1, 2], partitions)
    assert moves(before, after) == sum(1 for b in before.values() if b == 3)


def test_new_partitions_go_to_the_emptiest_brokers() -> None:
    before = assign([1, 2, 3], specs(a=3), {})
    after = assign([1, 2, 3], specs(a=6), before)
    assert all(after[tp] == b for tp, b in before.items())
    check_balanced(after, [1, 2, 3], specs(a=6))


def test_no_brokers_or_no_partitions_give_nothing() -> None:
    assert assign([], specs(a=3), {}) == {}
    assert assign([1], [], {("a", 0): 1}) == {}


def test_by_topic_lists_owners_in_partition_order() -> None:
    result = {("a", 0): 1, ("a", 1): 2, ("b", 0): 2}
    assert by_topic(result, {"a": 3, "b": 1}) == {"a": (1, 2, -1), "b": (2,)}


def test_loads_move_hot_partitions_apart() -> None:
    hot = [PartitionSpec("t", 0, 100.0), PartitionSpec("t", 1, 100.0)]
    cold = [PartitionSpec("t", p, 1.0) for p in range(2, 8)]
    current = {("t", 0): 1, ("t", 1): 1, ("t", 2): 1, ("t", 3): 1, ("t", 4): 2, ("t", 5): 2, ("t", 6): 2, ("t", 7): 2}
    result = assign([1, 2], hot + cold, current)
    check_balanced(result, [1, 2], hot + cold)
    assert result[("t", 0)] != result[("t", 1)]
    assert moves(current, result) == 2  # one swap


def test_balanced_loads_move_nothing() -> None:
    partitions = [PartitionSpec("t", p, 10.0 + p % 2) for p in range(8)]
    current = assign([1, 2], [PartitionSpec("t", p) for p in range(8)], {})
    assert assign([1, 2], partitions, current) == current


# --- properties -----------------------------------------------------------------------------------------
brokers_st = st.lists(st.integers(0, 20), min_size=1, max_size=7, unique=True)
topics_st = st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(1, 25), min_size=1, max_size=4)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[int], list[PartitionSpec], dict[TopicPartition, int]]:
    brokers = draw(brokers_st)
    partitions = specs(**draw(topics_st))
    pool = [*brokers, 99, 98]  # 98/99: brokers that are gone
    current = {p.tp: draw(st.sampled_from(pool)) for p in partitions if draw(st.booleans()) or draw(st.booleans())}
    return brokers, partitions, current


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_property_every_partition_on_a_live_broker_balanced(
    scenario: tuple[list[int], list[PartitionSpec], dict[TopicPartition, int]],
) -> None:
    brokers, partitions, current = scenario
    check_balanced(assign(brokers, partitions, current), brokers, partitions)


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_property_deterministic_whatever_the_input_order(
    scenario: tuple[list[int], list[PartitionSpec], dict[TopicPartition, int]], rnd: random.Random
) -> None:
    brokers, partitions, current = scenario
    shuffled_brokers, shuffled_parts, shuffled_current = list(brokers), list(partitions), list(current.items())
    rnd.shuffle(shuffled_brokers)
    rnd.shuffle(shuffled_parts)
    rnd.shuffle(shuffled_current)
    assert assign(brokers, partitions, current) == assign(shuffled_brokers, shuffled_parts, dict(shuffled_current))


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_property_a_result_is_a_fixed_point(
    scenario: tuple[list[int], list[PartitionSpec], dict[TopicPartition, int]],
) -> None:
    brokers, partitions, current = scenario
    first = assign(brokers, partitions, current)
    assert assign(brokers, partitions, first) == first


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_property_sticky_few_partitions_leave_live_owners(
    scenario: tuple[list[int], list[PartitionSpec], dict[TopicPartition, int]],
) -> None:
    """Partitions leave live owners only to fix the imbalance, plus at most one per orphan placed (an orphan
    may fill the place a topic's spread needs, pushing one partition out); a reshuffle would break this."""
    brokers, partitions, current = scenario
    result = assign(brokers, partitions, current)
    orphans = sum(1 for p in partitions if current.get(p.tp) not in brokers)
    moved_off_live = sum(1 for tp, b in result.items() if current.get(tp) in brokers and current[tp] != b)
    assert moved_off_live <= imbalance(current, brokers, partitions) + orphans


@settings(max_examples=200, deadline=None)
@given(brokers_st, topics_st, st.integers(21, 30))
def test_property_a_joining_broker_takes_only_its_share(brokers: list[int], topics: dict[str, int], new: int) -> None:
    partitions = specs(**topics)
    before = assign(brokers, partitions, {})
    after = assign([*brokers, new], partitions, before)
    check_balanced(after, [*brokers, new], partitions)
    gained = sum(1 for b in after.values() if b == new)
    assert gained >= len(partitions) // (len(brokers) + 1)
    assert moves(before, after) <= imbalance(before, [*brokers, new], partitions)


@settings(max_examples=200, deadline=None)
@given(
    brokers_st,
    st.lists(st.floats(0.0, 1000.0, allow_nan=False), min_size=1, max_size=40),
)
def test_property_loads_keep_count_balance_and_never_widen_the_gap(brokers: list[int], loads: list[float]) -> None:
    partitions = [PartitionSpec("t", p, load) for p, load in enumerate(loads)]
    by_count = assign(brokers, [PartitionSpec("t", p) for p in range(len(loads))], {})
    result = assign(brokers, partitions, by_count)
    check_balanced(result, brokers, partitions)

    def gap(a: Mapping[TopicPartition, int]) -> float:
        totals = {b: 0.0 for b in brokers}
        for tp, b in a.items():
            totals[b] += loads[tp[1]]
        return max(totals.values()) - min(totals.values())

    assert gap(result) <= gap(by_count) + 1e-9
    assert assign(brokers, partitions, result) == result


def test_describe_changes_names_each_reason() -> None:
    from brokers.cluster.controller import describe_changes
    from metadata.models import TopicAssignment

    stored = {"t1": TopicAssignment("t1", (1, 2, 3, 4, -1))}
    desired = {"t1": TopicAssignment("t1", (3, 3, 4, 1, 2)), "t2": TopicAssignment("t2", (1,))}
    lines = describe_changes(stored, desired, live={2, 3, 4}, draining={2}, pins={("t1", 2): 4},
                             names={"t1": "orders"})  # fmt: skip
    assert lines == [
        "broker 1 is gone (its session ended): failover: orders/0 -> 3",
        "broker 2 is draining: orders/1 -> 3",
        "requested moves: orders/2 -> 4",
        "balancing: orders/3 -> 1",
        "new or unassigned partitions: orders/4 -> 2, t2/0 -> 1",
    ]
