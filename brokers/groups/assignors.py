"""Server-side partition assignors of KIP-848 consumer groups: ``uniform`` (the default) and ``range``.

Both are sticky: a member keeps every partition of its previous target assignment that is still valid
and within its share, so a member joining takes partitions only from members above their new share and
never disturbs the rest. Both are deterministic (members and partitions are visited in sorted order).

* ``uniform`` balances all subscribed partitions over the members: with identical subscriptions every
  member ends with ``n // m`` or ``n // m + 1`` partitions; with different subscriptions it moves
  partitions from the most to the least loaded member that is subscribed to their topic until no such
  move narrows the gap.
* ``range`` assigns each topic on its own over the members subscribed to it: a fresh assignment gives
  member *i* (in member-id order) a contiguous range, the first ``n % m`` members one partition more, so
  topics with equal partition counts are co-partitioned; afterwards members keep their partitions up to
  that quota and the freed partitions fill the members below it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

TopicPartition = tuple[str, int]
"""(topic id, partition index); topic ids are UUID strings as in the topic registry."""
Assignment = frozenset[TopicPartition]
EMPTY: Assignment = frozenset()


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What an assignor knows of a topic: its id, name and partition count."""

    topic_id: str
    name: str
    partitions: int


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One member as an assignor sees it: the topic ids it subscribes to and its previous target."""

    topic_ids: frozenset[str]
    current: Assignment = EMPTY


class Assignor(Protocol):
    """A server-side assignor: members by id and topics by id in, the target assignment of every member out."""

    name: str

    def assign(self, members: Mapping[str, MemberSpec], topics: Mapping[str, TopicInfo]) -> dict[str, Assignment]:
        """Every member id of ``members`` maps to its new target (possibly empty)."""
        ...


def _valid(tp: TopicPartition, spec: MemberSpec, topics: Mapping[str, TopicInfo]) -> bool:
    topic = topics.get(tp[0])
    return topic is not None and tp[0] in spec.topic_ids and 0 <= tp[1] < topic.partitions


class UniformAssignor:
    """Balance every subscribed partition over the members, keeping previous ownership where it can."""

    name = "uniform"

    def assign(self, members: Mapping[str, MemberSpec], topics: Mapping[str, TopicInfo]) -> dict[str, Assignment]:
        ids = sorted(members)
        order = {tid: (t.name, tid) for tid, t in topics.items()}

        def key(tp: TopicPartition) -> tuple[str, str, int]:
            name, tid = order[tp[0]]
            return name, tid, tp[1]

        subscribers: dict[str, list[str]] = {}
        for m in ids:
            for tid in members[m].topic_ids:
                if tid in topics:
                    subscribers.setdefault(tid, []).append(m)
        owned: dict[str, set[TopicPartition]] = {m: set() for m in ids}
        taken: set[TopicPartition] = set()
        # 1. Stickiness: every member keeps what it had, if still valid and nobody claimed it first.
        for m in ids:
            for tp in sorted((tp for tp in members[m].current if _valid(tp, members[m], topics)), key=key):
                if tp not in taken:
                    taken.add(tp)
                    owned[m].add(tp)
        # 2. Unowned partitions go, one by one, to the least loaded member subscribed to their topic: a heap
        # per set of subscribers, whose stale entries (loads only grow here) are refreshed when popped.
        heaps: dict[tuple[str, ...], list[tuple[int, str]]] = {}
        for tid in sorted(subscribers, key=lambda t: order[t]):
            subs = tuple(subscribers[tid])
            heap = heaps.get(subs)
            if heap is None:
                heap = heaps[subs] = [(len(owned[m]), m) for m in subs]
                heapq.heapify(heap)
            for p in range(topics[tid].partitions):
                if (tid, p) in taken:
                    continue
                while True:
                    load, best = heapq.heappop(heap)
                    if load == len(owned[best]):
                        break
                    heapq.heappush(heap, (len(owned[best]), best))
                owned[best].add((tid, p))
                heapq.heappush(heap, (load + 1, best))
        # 3. Balance: move from the most to the least loaded member while that narrows the gap. Each move
        # lowers the sum of squared loads, so this ends; with equal subscriptions it ends at max - min <= 1.
        self._balance(ids, members, owned, key)
        return {m: frozenset(owned[m]) for m in ids}

    @staticmethod
    def _balance(
        ids: list[str],
        members: Mapping[str, MemberSpec],
        owned: dict[str, set[TopicPartition]],
        key: Callable[[TopicPartition], tuple[str, str, int]],
    ) -> None:
        while True:
            by_load = sorted(ids, key=lambda m: (len(owned[m]), m))
            moved = False
            for lo in by_load:
                for hi in reversed(by_load):
                    if len(owned[hi]) - len(owned[lo]) <= 1:
                        break
                    movable = [tp for tp in owned[hi] if tp[0] in members[lo].topic_ids]
                    if movable:
                        tp = max(movable, key=key)  # the last in (topic name, id, partition) order moves
                        owned[hi].discard(tp)
                        owned[lo].add(tp)
                        moved = True
                        break
                if moved:
                    break
            if not moved:
                return


class RangeAssignor:
    """Per topic, contiguous ranges in member-id order; sticky up to each member's quota."""

    name = "range"

    def assign(self, members: Mapping[str, MemberSpec], topics: Mapping[str, TopicInfo]) -> dict[str, Assignment]:
        ids = sorted(members)
        out: dict[str, set[TopicPartition]] = {m: set() for m in ids}
        for tid in sorted(topics, key=lambda t: (topics[t].name, t)):
            subs = [m for m in ids if tid in members[m].topic_ids]
            if not subs:
                continue
            current = {m: [p for t, p in members[m].current if t == tid] for m in subs}
            for m, parts in range_topic(topics[tid].partitions, subs, current).items():
                out[m].update((tid, p) for p in parts)
        return {m: frozenset(out[m]) for m in ids}


def range_topic(partitions: int, subs: list[str], current: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """Assign partitions 0..n-1 of one topic over ``subs`` (sorted member ids), sticky to ``current``."""
    q, extra = divmod(partitions, len(subs))
    taken: set[int] = set()
    want: dict[str, list[int]] = {}
    for m in subs:  # a partition claimed by two members (a stale target) goes to the first
        mine = sorted(p for p in set(current.get(m, ())) if 0 <= p < partitions and p not in taken)
        taken.update(mine)
        want[m] = mine
    quota = dict.fromkeys(subs, q)
    for m in sorted(subs, key=lambda m: (-len(want[m]), m)):  # who already holds more keeps one extra
        if extra and len(want[m]) > q:
            quota[m] += 1
            extra -= 1
    for m in subs:  # the remaining extras go in member order, as a fresh range assignment does
        if extra and quota[m] == q:
            quota[m] += 1
            extra -= 1
    kept = {m: want[m][: quota[m]] for m in subs}
    used = {p for parts in kept.values() for p in parts}
    free = [p for p in range(partitions) if p not in used]
    free.reverse()
    for m in subs:
        while len(kept[m]) < quota[m]:
            kept[m].append(free.pop())
        kept[m].sort()
    return kept


ASSIGNORS: dict[str, Assignor] = {a.name: a for a in (UniformAssignor(), RangeAssignor())}
DEFAULT_ASSIGNOR = "uniform"
