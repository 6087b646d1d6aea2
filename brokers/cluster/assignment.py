"""Which live broker should own each partition: a pure, deterministic, sticky balancing function.

Shaped like brokers/groups/assignors.py: plain values in, the desired assignment out, no I/O, so the
controller can be tested by properties alone.

``assign(brokers, partitions, current)`` returns an owner for every partition, such that

* by count: every broker's total differs from every other's by at most one, and within every topic every
  broker holds ``n // m`` or ``n // m + 1`` of its ``n`` partitions (so a topic's traffic spreads over the
  brokers instead of piling on one, and ``__consumer_offsets`` spreads its group coordinators);
* sticky: a partition stays on its current owner unless that owner is gone or holds more than its share;
  an assignment that already satisfies the bounds is returned unchanged;
* by load, when loads are given: after the count bounds hold, partitions are swapped (same topic) or moved
  (where the count bounds still hold after the move) from the most to the least loaded broker while that
  narrows their gap and the gap exceeds ``load_tolerance`` of the mean broker load; a partition without a
  load counts as the mean of the known ones;
* deterministic: brokers and partitions are visited in sorted order; the same input gives the same output.

Why both bounds can always hold at once: each topic has ``n % m < m`` "extra" partitions; dealing those
extras round the brokers gives no broker two extras of one topic and no broker two more extras than any
other. The moves below reach such a state without computing it up front:

1. partitions on live brokers stay; the rest go one by one to the broker with the fewest of that topic,
   then the fewest in total, then the lowest id;
2. per topic, while the spread exceeds one: move the highest-numbered partition of that topic from the
   broker holding most of it (most in total first) to the one holding least (least in total first);
3. while the totals' spread exceeds one: the fullest broker has, in some topic, one more partition than the
   emptiest (totals differ by two or more and each topic by at most one), so one partition of that topic
   moves; both bounds still hold after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TopicPartition = tuple[str, int]
"""(topic id, partition index)."""


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """One partition to place, with its measured load (e.g. bytes/s) if the brokers report one."""

    topic_id: str
    partition: int
    load: float | None = None

    @property
    def tp(self) -> TopicPartition:
        return self.topic_id, self.partition


def assign(
    brokers: Iterable[int],
    partitions: Iterable[PartitionSpec],
    current: Mapping[TopicPartition, int],
    *,
    load_tolerance: float = 0.1,
    fixed: Iterable[TopicPartition] = (),
) -> dict[TopicPartition, int]:
    """The desired owner of every partition (module docstring). No live broker: an empty result.

    Partitions in ``fixed`` (requested moves) stay where ``current`` has them; the others balance around
    them as far as the bounds can still be met.
    """
    live = sorted(set(brokers))
    specs = {p.tp: p for p in partitions}
    if not live or not specs:
        return {}
    state = _State(live, {tp for tp in fixed if current.get(tp) in live})
    orphans: list[TopicPartition] = []
    for tp in sorted(specs):
        owner = current.get(tp)
        if owner is not None and owner in state.count:
            state.place(tp, owner)
        else:
            orphans.append(tp)
    for tp in orphans:
        state.place(tp, state.emptiest_for(tp[0]))
    state.spread_topics()
    state.spread_totals()
    loads = _loads(specs.values())
    if loads is not None:
        state.balance_load(loads, load_tolerance)
    return dict(state.owner)


def moves(current: Mapping[TopicPartition, int], desired: Mapping[TopicPartition, int]) -> int:
    """How many partitions of ``desired`` are not where ``current`` has them (new ones included)."""
    return sum(1 for tp, b in desired.items() if current.get(tp) != b)


def by_topic(desired: Mapping[TopicPartition, int], partition_counts: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The assignment as one owner tuple per topic (index = partition); -1 where a partition has no owner."""
    return {
        topic_id: tuple(desired.get((topic_id, p), -1) for p in range(count))
        for topic_id, count in sorted(partition_counts.items())
    }


def _loads(specs: Iterable[PartitionSpec]) -> dict[TopicPartition, float] | None:
    given = {p.tp: float(p.load) for p in specs if p.load is not None}
    all_tps = [p.tp for p in specs]
    if not given:
        return None
    mean = sum(given.values()) / len(given)
    return {tp: given.get(tp, mean) for tp in all_tps}


class _State:
    """The assignment being built, with counts per broker and per (topic, broker)."""

    def __init__(self, live: list[int], fixed: set[TopicPartition] | None = None) -> None:
        self.live = live
        self.fixed = fixed or set()
        self.owner: dict[TopicPartition, int] = {}
        self.count: dict[int, int] = dict.fromkeys(live, 0)
        self.held: dict[str, dict[int, set[int]]] = {}  # topic -> broker -> partition indexes

    def topic_count(self, topic_id: str, broker: int) -> int:
        return len(self.held[topic_id][broker]) if topic_id in self.held else 0

    def emptiest_for(self, topic_id: str) -> int:
        """The broker with the fewest of the topic, then the fewest in total, then the lowest id."""
        return min(self.live, key=lambda b: (self.topic_count(topic_id, b), self.count[b], b))

    def place(self, tp: TopicPartition, broker: int) -> None:
        held = self.held.setdefault(tp[0], {b: set() for b in self.live})
        old = self.owner.get(tp)
        if old is not None:
            held[old].discard(tp[1])
            self.count[old] -= 1
        held[broker].add(tp[1])
        self.count[broker] += 1
        self.owner[tp] = broker

    def movable(self, topic_id: str, broker: int) -> list[int]:
        """The topic's partitions on ``broker`` that may move (not fixed), ascending."""
        return sorted(p for p in self.held[topic_id][broker] if (topic_id, p) not in self.fixed)

    def spread_topics(self) -> None:
        for topic_id in sorted(self.held):
            held = self.held[topic_id]
            for _ in range(sum(map(len, held.values())) * len(self.live) + 1):  # bounded; each move narrows
                movers = [b for b in self.live if self.movable(topic_id, b)]
                if not movers:
                    break
                hi = max(movers, key=lambda b: (len(held[b]), self.count[b], -b))
                lo = min(self.live, key=lambda b: (len(held[b]), self.count[b], b))
                if len(held[hi]) - len(held[lo]) <= 1:
                    break
                self.place((topic_id, self.movable(topic_id, hi)[-1]), lo)

    def spread_totals(self) -> None:
        for _ in range(len(self.owner) * len(self.live) + 1):  # bounded; each move narrows the spread
            hi = max(self.live, key=lambda b: (self.count[b], -b))
            lo = min(self.live, key=lambda b: (self.count[b], b))
            if self.count[hi] - self.count[lo] <= 1:
                return
            topic_id = next(
                (t for t in sorted(self.held) if len(self.held[t][hi]) > len(self.held[t][lo]) and self.movable(t, hi)),
                None,
            )
            if topic_id is None:
                return  # only fixed partitions could narrow it
            self.place((topic_id, self.movable(topic_id, hi)[-1]), lo)

    def balance_load(self, loads: Mapping[TopicPartition, float], tolerance: float) -> None:
        total = dict.fromkeys(self.live, 0.0)
        for tp, b in self.owner.items():
            total[b] += loads[tp]
        mean = sum(total.values()) / len(self.live)
        for _ in range(len(self.owner)):  # each step strictly narrows the sum of squares; bounded anyway
            hi = max(self.live, key=lambda b: (total[b], -b))
            lo = min(self.live, key=lambda b: (total[b], b))
            gap = total[hi] - total[lo]
            if gap <= 0 or gap <= tolerance * mean:
                return
            best: tuple[float, TopicPartition, TopicPartition | None] | None = None
            for topic_id in sorted(self.held):
                on_hi, on_lo = sorted(self.held[topic_id][hi]), sorted(self.held[topic_id][lo])
                options: list[tuple[TopicPartition, TopicPartition | None]] = []
                if self.count[hi] > self.count[lo] and len(on_hi) > len(on_lo):
                    options += [((topic_id, p), None) for p in on_hi]
                options += [((topic_id, p), (topic_id, q)) for p in on_hi for q in on_lo]
                for give, take in options:
                    if give in self.fixed or take in self.fixed:
                        continue
                    d = loads[give] - (loads[take] if take is not None else 0.0)
                    score = abs(gap - 2 * d)  # the gap between these two brokers afterwards
                    # Only a move that narrows the gap by the tolerance: a smaller gain could be undone by the
                    # next run (two equal loads swapping back and forth), and moves are not free.
                    if 0 < d < gap and gap - score >= tolerance * mean:
                        if best is None or score < best[0]:
                            best = (score, give, take)
            if best is None:
                return
            _, give, take = best
            d = loads[give] - (loads[take] if take is not None else 0.0)
            self.place(give, lo)
            if take is not None:
                self.place(take, hi)
            total[hi] -= d
            total[lo] += d
