"""What a broker should do about the controller's assignment: a watch-fed view of the owners, and a pure plan.

The controller writes where partitions *should* be (``assignments/``); brokers move them by taking and
releasing ownership (``owners/``, ownership.py). Each broker compares the two for itself:

* take: assigned to it and owned by no one (a new partition, a released one, or one whose owner's lease
  expired);
* release: owned by it and assigned to another broker, or whose topic is gone (a planned move: the log stops
  taking writes, closes its ledger, then the owner key is deleted, so the new owner can take it at once);
* waiting: assigned to it but still owned by another broker, which will release it (or whose lease will
  expire); nothing to do but watch.

A partition the controller left unassigned (``-1``: no live broker when it last wrote) stays where it is.
``OwnersView`` is also what Metadata answers read (leader = owner, leader epoch = the epoch in the owner
record), so it is kept by a watch, never read per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from brokers.cluster.assignment import TopicPartition
from metadata.api import MetadataStore
from metadata.keys import Keys
from metadata.models import OwnerRecord, TopicAssignment
from metadata.prefix_cache import CacheView, PrefixCache


@dataclass(frozen=True, slots=True)
class Plan:
    """Partitions to take, to release, and assigned here but still owned elsewhere; each sorted."""

    take: tuple[TopicPartition, ...] = ()
    release: tuple[TopicPartition, ...] = ()
    waiting: tuple[TopicPartition, ...] = ()


def plan(
    node_id: int, assignments: Mapping[str, TopicAssignment], owners: Mapping[TopicPartition, OwnerRecord]
) -> Plan:
    """What ``node_id`` should do to converge on ``assignments`` given the current ``owners`` (module docstring)."""
    take: list[TopicPartition] = []
    waiting: list[TopicPartition] = []
    for topic_id, assignment in assignments.items():
        for partition, wanted in enumerate(assignment.owners):
            if wanted != node_id:
                continue
            owner = owners.get((topic_id, partition))
            if owner is None:
                take.append((topic_id, partition))
            elif owner.node_id != node_id:
                waiting.append((topic_id, partition))
    release: list[TopicPartition] = []
    for (topic_id, partition), owner in owners.items():
        if owner.node_id != node_id:
            continue
        target = assignments.get(topic_id)
        if target is None or partition >= len(target.owners):
            release.append((topic_id, partition))
        elif target.owners[partition] not in (node_id, -1):
            release.append((topic_id, partition))
    return Plan(tuple(sorted(take)), tuple(sorted(release)), tuple(sorted(waiting)))


class OwnersView(CacheView[OwnerRecord]):
    """Every partition's current owner and epoch, kept current by a watch over ``owners/``."""

    def __init__(
        self, store: MetadataStore, keys: Keys, *, on_change: Callable[[frozenset[str]], None] | None = None
    ) -> None:
        self._keys = keys
        self._prefix = keys.owners_prefix()
        super().__init__(PrefixCache(store, self._prefix, self._decode, on_change=on_change, name="owners"))

    def _decode(self, suffix: str, value: bytes) -> OwnerRecord:
        self._keys.owner_id(self._prefix + suffix)  # ValueError if not an ownership key
        return OwnerRecord.decode(value)

    @property
    def owners(self) -> Mapping[TopicPartition, OwnerRecord]:
        """By (topic id, partition); rebuilt only when an owner key changes (do not mutate)."""
        return self.derived("owners", self._by_partition)

    def _by_partition(self, items: Mapping[str, OwnerRecord]) -> dict[TopicPartition, OwnerRecord]:
        return {self._keys.owner_id(self._prefix + suffix): record for suffix, record in items.items()}

    def owner_of(self, topic_id: str, partition: int) -> OwnerRecord | None:
        return self._cache.items.get(self._keys.owner(topic_id, partition)[len(self._prefix) :])

    def departed(self, topic_id: str, partition: int) -> tuple[OwnerRecord, float] | None:
        """While a partition is unowned: its last owner and when (time.monotonic()) the key went."""
        return self._cache.departed(self._keys.owner(topic_id, partition)[len(self._prefix) :])

    async def wait_for(self, predicate: Callable[[Mapping[TopicPartition, OwnerRecord]], bool]) -> None:
        """Wait until ``predicate(owners)`` holds (bound it with ``asyncio.timeout``)."""
        await self._cache.wait_until(lambda _items: predicate(self.owners))
