"""Controller election and the controller's one job: keep ``assignments/{topic_id}`` equal to the desired
assignment of every partition to the live brokers.

Election (``ControllerElection``): every broker watches ``controller`` (a PrefixCache, so ``leader_id`` is
known everywhere for Metadata/DescribeCluster answers) and, while the key is absent and its session alive,
tries to create it bound to its session lease with a ControllerRecord (compare: absent). The winner leads
until its lease is lost, the key changes, or it steps down (``stop`` deletes the key if still its own). The
loss of the lease deposes it synchronously, from the session's lost-callback: it stops acting at once,
without waiting for the store.

Controller (``Controller``): while leading, any change of the live brokers, the topics (``topics/``) or the
assignments (``assignments/``) schedules one reconciliation (changes arriving together are coalesced by a
short debounce). Reconciling computes ``assignment.assign`` (count-balanced, sticky, by load when a
``loads`` source is given) over the live brokers and every topic's partitions - ``__consumer_offsets``
included, it is a topic like the others - starting from the assignments stored, and writes only the topics
whose owners changed, deleting the assignments of topics that are gone. Every write is a commit that also
checks the controller key is still at the version this controller created, so a deposed controller's late
write is refused by the store itself (VersionConflict deposes it).

Moves (pins): ``reassignments/{topic_id}/{p}`` (a Reassignment, written by AlterPartitionReassignments)
asks for a partition to be owned by ``target``. While ``target`` is live (and not draining) the desired
owner of that partition is ``target`` whatever the balance says (the rest are balanced around it, since it
counts as already there). The controller deletes a pin once the owner key names ``target`` (the move is
done), or ``target`` is gone, or the partition no longer exists. After that the balancer is free again:
the moved partition is sticky on its new owner unless that owner now holds more than its share.

One key per topic (TopicAssignment: owner node id per partition): a topic's partitions change in one put,
and a broker learns its partitions from one watch over ``assignments/``. Brokers act on it (take what is
assigned to them and not owned, release what is owned and no longer assigned): brokers/cluster/follower.py.
Brokers in controlled shutdown (``draining/{id}``, bound to their lease) are live but assigned nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from brokers.cluster.assignment import PartitionSpec, TopicPartition, assign, by_topic
from brokers.cluster.membership import LiveBrokers
from metadata.api import MAX_COMMIT_OPS, Check, MetadataError, MetadataStore, Put, VersionConflict
from metadata.keys import Keys
from metadata.models import ControllerRecord, OwnerRecord, Reassignment, TopicAssignment, TopicRecord
from metadata.prefix_cache import PrefixCache
from metadata.session import LeasedSession, SessionLost

log = logging.getLogger(__name__)

RETRY_INTERVAL = 0.5
"""How often a broker retries its campaign or a failed reconciliation (the watch wakes it sooner)."""
DEBOUNCE = 0.05
"""How long a reconciliation waits for more changes to arrive together (a broker leaving drops many keys)."""

Loads = Callable[[], Mapping[TopicPartition, float]]


def _decode_controller(suffix: str, value: bytes) -> ControllerRecord:
    if suffix:
        raise ValueError(f"not the controller key: {suffix!r}")
    return ControllerRecord.decode(value)


def _decode_assignment(suffix: str, value: bytes) -> TopicAssignment:
    record = TopicAssignment.decode(value)
    if record.topic_id != suffix:
        raise ValueError(f"assignment of {record.topic_id} stored under {suffix!r}")
    return record


def _compute(
    brokers: list[int],
    specs: list[PartitionSpec],
    current: dict[TopicPartition, int],
    counts: dict[str, int],
    pins: Mapping[TopicPartition, int] | None = None,
) -> dict[str, TopicAssignment]:
    """The balanced assignment, with every pinned partition (target live) placed on its target."""
    live = set(brokers)
    honoured = {tp: target for tp, target in (pins or {}).items() if target in live}
    result = assign(brokers, specs, {**current, **honoured}, fixed=honoured)  # pinned: placed on their target
    return {tid: TopicAssignment(tid, owners) for tid, owners in by_topic(result, counts).items()}


def _decode_reassignment(suffix: str, value: bytes) -> Reassignment:
    record = Reassignment.decode(value)
    if f"{record.topic_id}/{record.partition}" != suffix:
        raise ValueError(f"reassignment of {record.topic_id}/{record.partition} stored under {suffix!r}")
    return record


def _decode_owner(suffix: str, value: bytes) -> OwnerRecord:
    topic_id, _, partition = suffix.rpartition("/")
    if not topic_id or not partition.isdigit():
        raise ValueError(f"not an ownership key: {suffix!r}")
    return OwnerRecord.decode(value)


class ControllerElection:
    """Campaigns for the controller key under the session lease (module docstring)."""

    def __init__(
        self,
        store: MetadataStore,
        keys: Keys,
        session: LeasedSession,
        node_id: int,
        *,
        on_elected: Callable[[], None] | None = None,
        on_deposed: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._session = session
        self.node_id = node_id
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._view: PrefixCache[ControllerRecord] = PrefixCache(
            store, keys.controller(), _decode_controller, on_change=self._changed, name="controller"
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.version = 0
        """Version of the controller key this broker created while it leads (0: not leading)."""
        self.elections_won = 0
        session.on_lost(self._lease_lost)

    @property
    def is_leader(self) -> bool:
        return self.version != 0

    @property
    def leader_id(self) -> int | None:
        """The current controller's node id as last seen (None while there is none)."""
        record = self._view.items.get("")
        return None if record is None else record.node_id

    async def start(self) -> None:
        await self._view.start()
        self._wake.set()
        self._task = asyncio.create_task(self._campaign(), name=f"controller-election-{self.node_id}")

    async def stop(self) -> None:
        """Stop campaigning; if leading, step down (delete the key if it is still ours) so another takes over."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        version = self.version
        if version:
            self.depose("stepping down")
            with contextlib.suppress(VersionConflict, MetadataError):
                await self._store.delete(self._keys.controller(), expected_version=version)
        await self._view.stop()

    def _lease_lost(self, reason: str) -> None:
        if self.is_leader:
            self.depose(f"session lost: {reason}")
        self._wake.set()

    def _changed(self, _keys: frozenset[str]) -> None:
        current = self._view.version_of("")
        if self.is_leader and current != self.version:
            self.depose("the controller key changed or vanished")
        self._wake.set()

    def depose(self, reason: str) -> None:
        if not self.version:
            return
        self.version = 0
        log.warning("broker %d is no longer the controller: %s", self.node_id, reason)
        if self._on_deposed is not None:
            self._on_deposed(reason)

    async def _campaign(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            if self.is_leader or not self._session.alive or "" in self._view.items:
                continue
            try:
                version = await self._session.put(
                    self._keys.controller(), ControllerRecord(self.node_id).encode(), expected_version=0
                )
            except (VersionConflict, SessionLost):
                continue
            except (MetadataError, OSError) as exc:
                log.warning("controller campaign of broker %d failed (will retry): %r", self.node_id, exc)
                continue
            if not self._session.alive:  # lost while the put was in flight: the key dies with the lease
                continue
            self.version = version
            self.elections_won += 1
            log.info("broker %d is the controller", self.node_id)
            if self._on_elected is not None:
                self._on_elected()


class Controller:
    """While elected, writes the desired assignment of every partition (module docstring)."""

    def __init__(
        self,
        store: MetadataStore,
        keys: Keys,
        session: LeasedSession,
        node_id: int,
        live: LiveBrokers,
        *,
        loads: Loads | None = None,
        debounce: float = DEBOUNCE,
        rejoin_delay: float = 0.0,
    ) -> None:
        self._store = store
        self._keys = keys
        self._live = live
        self._loads = loads
        self._debounce = debounce
        self._rejoin_delay = rejoin_delay
        """Seconds a broker that left and came back is not balanced onto (``broker.rejoin.delay.ms``)."""
        self._seen_live: set[int] = set()
        self._gone_seen: set[int] = set()  # brokers this controller saw leave (and not come back yet)
        self._rejoined: dict[int, float] = {}  # node id -> time.monotonic() it registered again
        self.election = ControllerElection(
            store, keys, session, node_id, on_elected=self._elected, on_deposed=self._deposed
        )
        self.topics: PrefixCache[TopicRecord] = PrefixCache(
            store, keys.topics_prefix(), lambda _name, value: TopicRecord.decode(value), name="topics"
        )
        self.assignments: PrefixCache[TopicAssignment] = PrefixCache(
            store, keys.assignments_prefix(), _decode_assignment, name="assignments"
        )
        self.draining: PrefixCache[int] = PrefixCache(
            store, keys.draining_prefix(), lambda suffix, _value: int(suffix), name="draining brokers"
        )
        """Brokers in controlled shutdown (``keys.draining``): live, but assigned nothing."""
        self.reassignments: PrefixCache[Reassignment] = PrefixCache(
            store, keys.reassignments_prefix(), _decode_reassignment, name="reassignments"
        )
        """Requested moves (pins), by ``{topic_id}/{partition}``."""
        self.owners: PrefixCache[OwnerRecord] = PrefixCache(
            store, keys.owners_prefix(), _decode_owner, name="owners (controller)"
        )
        """Current owners, to see when a pinned move is done."""
        self.pins_cleared = 0
        """Pins deleted because their move completed or can no longer happen (observability, tests)."""
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconciliations = 0
        """Reconciliations that wrote something (observability, tests)."""
        for view in (self.topics, self.assignments, self.draining, self.reassignments):
            view.add_listener(self._kick)
        self.owners.add_listener(self._owners_changed)
        live.add_listener(self._live_changed)

    async def start(self) -> None:
        """Follow topics and assignments, then campaign (``live`` must be started by the owner)."""
        await self.topics.start()
        await self.assignments.start()
        await self.draining.start()
        await self.reassignments.start()
        await self.owners.start()
        await self.election.start()

    async def stop(self) -> None:
        await self.election.stop()  # deposes: the reconcile task is cancelled
        await self._cancel()
        await self.owners.stop()
        await self.reassignments.stop()
        await self.draining.stop()
        await self.assignments.stop()
        await self.topics.stop()

    # --- leadership ---------------------------------------------------------------------------
    def _elected(self) -> None:
        self._dirty.set()
        self._task = asyncio.create_task(self._run(), name=f"controller-{self.election.node_id}")

    def _deposed(self, _reason: str) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # stop acting at once: no await between losing the lease and this

    async def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _kick(self, _keys: frozenset[str]) -> None:
        self._dirty.set()

    def _live_changed(self, _keys: frozenset[str]) -> None:
        """Note brokers that registered again after leaving (a restart after a crash, or a rolling restart):
        partitions are not balanced onto one for ``rejoin_delay`` seconds. Clients back off reconnecting to
        a broker that was down (librdkafka up to 10 s), so moving a partition back at once would make it
        unreachable for them again right after its failover; Kafka likewise waits before preferred-leader
        elections. A partition that needs an owner may still go to it, and so may a requested move."""
        now_live = set(self._live.brokers)
        if self._rejoin_delay > 0:
            now = time.monotonic()
            for node in now_live - self._seen_live:
                if node in self._gone_seen:  # else a broker new to this controller: balanced onto at once
                    self._rejoined[node] = now
                    asyncio.get_running_loop().call_later(self._rejoin_delay + 0.05, self._dirty.set)
            self._gone_seen |= self._seen_live - now_live
            self._gone_seen -= now_live
        self._seen_live = now_live
        self._dirty.set()

    def _held_back(self, brokers: list[int]) -> set[int]:
        """Brokers that rejoined under ``rejoin_delay`` ago, own no partition (owner keys: the assignment may
        still name one whose lease just expired) and are no move's target; the rest are balanced around them.
        None while they are the only brokers."""
        now = time.monotonic()
        for node, at in list(self._rejoined.items()):
            if now - at >= self._rejoin_delay:
                del self._rejoined[node]
        busy = set(self.pins().values())
        for suffix, owner in self.owners.items.items():
            # Only owner keys of its current session: those of the one that ended may still be in the view
            # (the owners and brokers watches are separate streams) and will vanish.
            registered, taken = self._live.registered_at(owner.node_id), self.owners.version_of(suffix)
            if registered is not None and taken is not None and taken > registered:
                busy.add(owner.node_id)
        held = {b for b in brokers if b in self._rejoined and b not in busy}
        return held if len(held) < len(brokers) else set()

    def _owners_changed(self, keys: frozenset[str]) -> None:
        if any(k in self.reassignments.items for k in keys):  # only a pinned partition's owner matters here
            self._dirty.set()

    async def _run(self) -> None:
        while self.election.is_leader:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_INTERVAL * 10):
                    await self._dirty.wait()
            await asyncio.sleep(self._debounce)
            self._dirty.clear()
            try:
                await self.reconcile()
            except VersionConflict:
                self.election.depose("an assignment write found the controller key changed")
                return
            except MetadataError as exc:
                log.warning("controller: reconciliation failed (will retry): %r", exc)
                self._dirty.set()
                await asyncio.sleep(RETRY_INTERVAL)
            except Exception:  # a bug must not end the controller silently: log it and try again later
                log.exception("controller: reconciliation failed (will retry)")
                self._dirty.set()
                await asyncio.sleep(RETRY_INTERVAL)

    # --- the assignment -----------------------------------------------------------------------
    def desired(self) -> dict[str, TopicAssignment]:
        """The assignment the live brokers, topics and stored assignments call for, by topic id."""
        return _compute(*self._inputs())

    def pins(self) -> dict[TopicPartition, int]:
        """Requested moves: (topic id, partition) -> target node id."""
        return {(r.topic_id, r.partition): r.target for r in self.reassignments.items.values()}

    def _inputs(
        self,
    ) -> tuple[list[int], list[PartitionSpec], dict[TopicPartition, int], dict[str, int], dict[TopicPartition, int]]:
        """A snapshot of what the assignment depends on (plain values, safe to hand to a thread)."""
        draining = set(self.draining.items.values())
        brokers = sorted(b for b in self._live.brokers if b not in draining)
        counts = {t.topic_id: t.partitions for t in self.topics.items.values()}
        current = {
            (a.topic_id, p): owner
            for a in self.assignments.items.values()
            for p, owner in enumerate(a.owners)
            if owner >= 0
        }
        held = self._held_back(brokers)
        if held:
            brokers = [b for b in brokers if b not in held]
        loads = self._loads() if self._loads is not None else {}
        specs = [PartitionSpec(tid, p, loads.get((tid, p))) for tid, n in sorted(counts.items()) for p in range(n)]
        return brokers, specs, current, counts, self.pins()

    async def reconcile(self) -> int:
        """Write every topic whose desired owners differ from the stored ones; returns how many keys changed.

        Does nothing while no broker is live and not draining (an empty assignment helps no one). Raises
        VersionConflict if this broker is no longer the controller (the store refused the write).
        """
        version = self.election.version
        draining = set(self.draining.items.values())
        if not version or not any(b not in draining for b in self._live.brokers):
            return 0  # no live broker that may take partitions: leave them where they are
        # In a thread: ~0.4 s for 10 000 partitions on 30 brokers, too long to hold the event loop.
        desired = await asyncio.to_thread(_compute, *self._inputs())
        if self.election.version != version:
            return 0
        stored = self.assignments.items
        puts = [
            Put(self._keys.assignment(tid), a.encode()) for tid, a in sorted(desired.items()) if stored.get(tid) != a
        ]
        deletes = [self._keys.assignment(tid) for tid in sorted(stored) if tid not in desired]
        ops: list[Put | str] = [*puts, *deletes]
        for start in range(0, len(ops), MAX_COMMIT_OPS):
            chunk = ops[start : start + MAX_COMMIT_OPS]
            if not self.election.is_leader:
                return 0
            await self._store.commit(
                [Check(self._keys.controller(), version)],
                [op for op in chunk if isinstance(op, Put)],
                [op for op in chunk if isinstance(op, str)],
            )
        if ops:
            self.reconciliations += 1
            log.info("controller %d: wrote %d assignments, removed %d", self.election.node_id, len(puts), len(deletes))
            names = {t.topic_id: t.name for t in self.topics.items.values()}
            for line in describe_changes(stored, desired, set(self._live.brokers), draining, self.pins(), names):
                log.info("controller %d: %s", self.election.node_id, line)
        await self._clear_pins(version)
        return len(ops)

    def _stale_pins(self) -> list[tuple[str, Reassignment, str]]:
        """Pins to delete, with why: the move is done, the target is gone, or the partition is."""
        draining = set(self.draining.items.values())
        live = {b for b in self._live.brokers if b not in draining}
        counts = {t.topic_id: t.partitions for t in self.topics.items.values()}
        stale = []
        for suffix, pin in self.reassignments.items.items():
            owner = self.owners.items.get(suffix)
            if pin.partition >= counts.get(pin.topic_id, 0):
                stale.append((suffix, pin, "the partition does not exist"))
            elif pin.target not in live:
                stale.append((suffix, pin, f"broker {pin.target} is not live"))
            elif owner is not None and owner.node_id == pin.target:
                stale.append((suffix, pin, "moved"))
        return stale

    async def _clear_pins(self, version: int) -> None:
        """Delete stale pins, each only if it is unchanged (a newer request for the same partition stays)."""
        for suffix, pin, why in self._stale_pins():
            pin_version = self.reassignments.version_of(suffix)
            if pin_version is None or not self.election.is_leader:
                continue
            key = self._keys.reassignment(pin.topic_id, pin.partition)
            try:
                await self._store.commit([Check(self._keys.controller(), version), Check(key, pin_version)], [], [key])
            except VersionConflict:
                if self.election.version != version:
                    raise
                continue  # the pin changed meanwhile: the next reconciliation looks again
            self.pins_cleared += 1
            log.info(
                "controller %d: move of %s/%d to broker %d: %s",
                self.election.node_id, pin.topic_id, pin.partition, pin.target, why,
            )  # fmt: skip


LISTED = 20
"""Partitions named per line of ``describe_changes`` (the rest are counted)."""


def describe_changes(
    stored: Mapping[str, TopicAssignment],
    desired: Mapping[str, TopicAssignment],
    live: set[int],
    draining: set[int],
    pins: Mapping[TopicPartition, int],
    names: Mapping[str, str],
) -> list[str]:
    """One line per reason a partition's assigned owner changes: its broker is gone (failover), draining,
    a requested move, or balancing; each naming the partitions (``topic/p -> node``)."""
    groups: dict[str, list[str]] = {}
    for tid, a in sorted(desired.items()):
        before = stored.get(tid)
        for p, owner in enumerate(a.owners):
            old = before.owners[p] if before is not None and p < len(before.owners) else -1
            if old == owner:
                continue
            if old < 0:
                why = "new or unassigned partitions"
            elif old not in live:
                why = f"broker {old} is gone (its session ended): failover"
            elif old in draining:
                why = f"broker {old} is draining"
            elif pins.get((tid, p)) == owner:
                why = "requested moves"
            else:
                why = "balancing"
            groups.setdefault(why, []).append(f"{names.get(tid, tid)}/{p} -> {owner}")
    lines = []
    for why, moves in groups.items():
        more = f" and {len(moves) - LISTED} more" if len(moves) > LISTED else ""
        lines.append(f"{why}: {', '.join(moves[:LISTED])}{more}")
    return lines
