"""The offloader: turns a closed ledger into a segment object, commits it, then deletes the ledger.

Steps for one ledger (design §7), each safe to crash after:

1. **intent** — ``keys.offload_intent(topic, p, ledger)`` records the object name before anything is
   uploaded (create-only put). The name is fixed: ``{cluster}/topics/{topic}/{p}/{base:020d}-{ledger}.seg``.
2. **build** and 3. **upload**, streamed (``build.py``) — the entries come from the owner's bytes
   (``OwnerBytes``: what this broker confirmed into the ledger, cut at its last entry id) or else from the
   ledger (CLOSED; opened with ``recover=False``) read in runs; each entry's CRC-32C and batch framing is
   checked and its batches go to a create-only ``put_stream`` as they come, never gathered into one
   buffer. If the object exists already (an earlier attempt), it counts as done when it is a valid segment
   of the same ledger and offsets; a damaged one (a crash mid-upload on a store without atomic puts) is
   deleted and written again.
4. **commit** — one atomic metadata commit: the segment key is created, the intent deleted (both checked),
   and the ledger marked ``offloaded`` in the partition state (compare-and-swap).
5. **delete** — the ledger is deleted from the bookies, then its ref dropped from the partition state (the
   last ref is kept: it carries the log end offset).

Object store, metadata store and bookie outages are retried with exponential backoff; the write path is not
involved and keeps landing in bookies meanwhile. A crash leaves a retry (the intent, or a ref marked
``offloaded``) or an orphan object that ``collect_orphans`` removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from metadata.api import Check, MetadataStore, Put, StoreUnavailable, VersionConflict
from metadata.keys import Keys
from metadata.models import LedgerRef, OffloadIntent, PartitionState, ProducerSnapshotEntry, SegmentRecord
from storage.entry import BookieUnavailable
from storage.ledger.api import LedgerClient, LedgerState, NoSuchLedger, NotEnoughBookies
from storage.objectstore.api import ObjectExists, ObjectNotFound, ObjectStore, ObjectStoreUnavailable
from storage.offload.backlog import BacklogTracker, OffloadBacklog
from storage.offload.build import (
    BuildError,
    BuildSpec,
    EntrySource,
    SegmentStream,
    Streamed,
    bookie_entries,
    owner_entries,
    owner_source,
    upload_stream,
)
from storage.offload.gc import collect_orphans
from storage.offload.owner_bytes import DEFAULT_BUDGET_BYTES, OwnerBytes
from storage.offload.state import PartitionMoved, PartitionStateAccess, StoreStateAccess
from storage.segment.catalog import list_segments
from storage.segment.format import (
    DEFAULT_INDEX_INTERVAL,
    CorruptSegment,
    object_key,
    parse_snapshot,
    parse_tail,
    verify_object,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIABLE: tuple[type[Exception], ...] = (
    ObjectStoreUnavailable,
    StoreUnavailable,
    BookieUnavailable,
    NotEnoughBookies,
    VersionConflict,
)
STEPS = ("intent", "built", "uploaded", "committed", "ledger_deleted", "dropped")
"""Names passed to the step hook, in order (for observability and crash tests)."""


class OffloadError(Exception):
    """An offload that retrying cannot fix (a ledger that does not match its ref, an open ledger...)."""


@dataclass(frozen=True, slots=True)
class OffloadConfig:
    """Knobs of the offloader. ``max_attempts`` None retries retriable failures until cancelled.

    ``concurrency`` segments are built and uploaded at once, each streamed (a few MiB in memory, plus a run of
    ``read_entries`` entries when read from the bookies). ``owner_bytes_max`` bounds the confirmed entries
    kept for offload from the owner's bytes, broker-wide (``offload.owner.bytes.max``; 0: always read the
    bookies).
    """

    read_entries: int = 32
    index_interval: int = DEFAULT_INDEX_INTERVAL
    concurrency: int = 1
    owner_bytes_max: int = DEFAULT_BUDGET_BYTES
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0
    max_attempts: int | None = None


@dataclass(frozen=True, slots=True)
class OffloadStats:
    segments: int = 0
    bytes: int = 0
    retries: int = 0
    reuploads: int = 0
    orphans_deleted: int = 0
    from_owner: int = 0
    """Segments built from the owner's bytes (no bookie read)."""
    from_bookies: int = 0
    """Segments built from entries read back from the bookies."""


class Offloader:
    """Offloads closed ledgers of the partitions this broker owns (one instance per broker)."""

    def __init__(
        self,
        store: MetadataStore,
        keys: Keys,
        ledgers: LedgerClient,
        objects: ObjectStore,
        *,
        config: OffloadConfig | None = None,
        step_hook: Callable[[str], None] | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._store = store
        self._keys = keys
        self._ledgers = ledgers
        self._objects = objects
        self._config = config or OffloadConfig()
        self._hook = step_hook
        self._clock_ms = clock_ms
        self._access: dict[tuple[str, int], PartitionStateAccess] = {}
        self._listeners: dict[tuple[str, int], Callable[[SegmentRecord], None]] = {}
        self._snapshots: dict[tuple[str, int], tuple[int, tuple[ProducerSnapshotEntry, ...]]] = {}
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._again: set[tuple[str, int]] = set()
        self._backlog = BacklogTracker()
        self._stats = OffloadStats()
        self._slots = asyncio.Semaphore(max(1, self._config.concurrency))
        self.owner_bytes = OwnerBytes(self._config.owner_bytes_max)
        """Entries the partition logs confirmed, kept for offload (``PartitionLog`` adds, offload drops)."""

    # --- wiring ----------------------------------------------------------------------------------
    def attach(
        self,
        topic_id: str,
        partition: int,
        access: PartitionStateAccess,
        on_segment: Callable[[SegmentRecord], None] | None = None,
    ) -> None:
        """Use ``access`` (the owning partition log's) to change this partition's state; ``on_segment`` is
        called with each segment right after its commit, before its ledger is deleted (switch reads of
        that range to the segment then)."""
        self._access[(topic_id, partition)] = access
        if on_segment is not None:
            self._listeners[(topic_id, partition)] = on_segment

    def detach(self, topic_id: str, partition: int) -> None:
        """The partition left this broker: stop offloading it and forget its figures."""
        self._access.pop((topic_id, partition), None)
        self._listeners.pop((topic_id, partition), None)
        self._snapshots.pop((topic_id, partition), None)
        self._backlog.forget(topic_id, partition)
        self.owner_bytes.drop_partition(topic_id, partition)
        task = self._tasks.get((topic_id, partition))
        if task is not None:
            task.cancel()

    def access(self, topic_id: str, partition: int) -> PartitionStateAccess:
        found = self._access.get((topic_id, partition))
        return found if found is not None else StoreStateAccess(self._store, self._keys, topic_id, partition)

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    # --- figures ---------------------------------------------------------------------------------
    def backlog(self, topic_id: str | None = None, partition: int | None = None) -> OffloadBacklog:
        """Ledgers and bytes waiting for offload and the oldest one's age (all partitions, or some)."""
        return self._backlog.snapshot(topic_id, partition)

    def lag(self, topic_id: str | None = None, partition: int | None = None) -> float:
        """Seconds the oldest closed ledger has been waiting for offload (0 when none waits)."""
        return self._backlog.snapshot(topic_id, partition).oldest_age_s

    def stats(self) -> OffloadStats:
        return self._stats

    # --- background ------------------------------------------------------------------------------
    def closed(self, topic_id: str, partition: int, ledger_id: int, size: int) -> None:
        """A ledger of the partition closed: count it in the backlog at once (even while offload is stuck)."""
        self._backlog.closed(topic_id, partition, ledger_id, size)

    def schedule(self, topic_id: str, partition: int) -> None:
        """Offload every closed ledger of the partition in the background (call when a ledger closes)."""
        key = (topic_id, partition)
        task = self._tasks.get(key)
        if task is not None and not task.done():
            self._again.add(key)
            return
        self._tasks[key] = asyncio.get_running_loop().create_task(self._run(topic_id, partition))

    async def _run(self, topic_id: str, partition: int) -> None:
        key = (topic_id, partition)
        while True:
            self._again.discard(key)
            try:
                await self.offload_pending(topic_id, partition)
            except asyncio.CancelledError:
                raise
            except PartitionMoved as exc:  # the partition left this broker meanwhile: its new owner offloads
                log.info("offload of %s/%d stopped: %s", topic_id, partition, exc)
                return
            except Exception as exc:
                log.exception("offload of %s/%d stopped", topic_id, partition)
                self._backlog.failed(topic_id, partition, repr(exc))
                return
            if key not in self._again:
                return

    async def idle(self) -> None:
        """Wait until no background offload runs."""
        while any(not t.done() for t in self._tasks.values()):
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel background offloads (they resume from metadata next time)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()

    # --- offload ---------------------------------------------------------------------------------
    async def offload_pending(self, topic_id: str, partition: int) -> list[SegmentRecord]:
        """Offload the partition's closed ledgers in offset order and finish half-done ones."""
        done: list[SegmentRecord] = []
        state = await self._retrying(topic_id, partition, self.access(topic_id, partition).current)
        self.owner_bytes.retain(topic_id, partition, {r.ledger_id for r in state.ledgers})
        await self._track(topic_id, partition, state)
        for ref in state.ledgers:
            if not ref.closed:
                break
            record = await self.offload(topic_id, partition, ref)
            if record is not None:
                done.append(record)
        return done

    async def _track(self, topic_id: str, partition: int, state: PartitionState) -> None:
        waiting: dict[int, int] = {}
        for ref in state.ledgers:
            if ref.closed and not ref.offloaded:
                info = await self._ledgers.ledger_info(ref.ledger_id)
                waiting[ref.ledger_id] = 0 if info is None else info.length
        self._backlog.waiting(topic_id, partition, waiting)

    async def offload(self, topic_id: str, partition: int, ref: LedgerRef) -> SegmentRecord | None:
        """Offload one closed ledger (idempotent; retries retriable failures with backoff).

        Returns its segment record; None if the ledger held no records or left the log meanwhile, and when
        a late retry finds the ledger already offloaded and dropped.
        """
        result = await self._retrying(topic_id, partition, lambda: self._offload_once(topic_id, partition, ref))
        self._backlog.done(topic_id, partition, ref.ledger_id)
        self._backlog.failed(topic_id, partition, None)
        return result

    async def _retrying(self, topic_id: str, partition: int, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = self._config.backoff_initial_s
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt()
            except RETRIABLE as exc:
                limit = self._config.max_attempts
                if limit is not None and tries >= limit:
                    raise
                self._stats = replace(self._stats, retries=self._stats.retries + 1)
                if isinstance(exc, VersionConflict) and tries < 3:
                    continue  # another commit raced ours: look again at once
                self._backlog.failed(topic_id, partition, repr(exc))
                log.warning("offload of %s/%d: %r; retrying in %.1fs", topic_id, partition, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.backoff_max_s)

    async def _offload_once(self, topic_id: str, partition: int, ref: LedgerRef) -> SegmentRecord | None:
        access = self.access(topic_id, partition)
        state = await access.current()
        current = _find(state, ref.ledger_id)
        intent_key = self._keys.offload_intent(topic_id, partition, ref.ledger_id)
        if current is None:
            await self._abandon(topic_id, partition, ref.ledger_id)
            return None
        if not current.closed:
            raise OffloadError(f"ledger {ref.ledger_id} of {topic_id}/{partition} is not closed")
        if current.last_offset < current.first_offset:  # no records: no segment (its base is the next one's)
            await self._retire_empty(topic_id, partition, current)
            return None
        segment_key = self._keys.segment(topic_id, partition, current.first_offset)
        existing = await self._store.get(segment_key)
        record = None if existing is None else SegmentRecord.decode(existing.value)
        if record is not None and record.ledger_id != current.ledger_id:
            raise OffloadError(f"segment {segment_key} belongs to ledger {record.ledger_id}, not {current.ledger_id}")
        if current.offloaded or record is not None:
            if not current.offloaded:  # only if an access split the commit: set the flag now
                await access.update(lambda s: _mark_offloaded(s, current.ledger_id))
            await self._finish(topic_id, partition, current)
            return record

        got = await self._store.get(intent_key)
        if got is None:
            key = object_key(self._keys.cluster, topic_id, partition, current.first_offset, current.ledger_id)
            intent = OffloadIntent(current.ledger_id, current.first_offset, key, self._clock_ms())
            intent_version = await self._store.put(intent_key, intent.encode(), expected_version=0)
        else:
            intent, intent_version = OffloadIntent.decode(got.value), got.version
        self._step("intent")

        async with self._slots:
            streamed = await self._stream(topic_id, partition, current, intent.object_key, _aborted_in(state, current))
        footer, writer = streamed.footer, streamed.writer
        self._step("built")
        self._step("uploaded")

        record = SegmentRecord(
            footer.base_offset, footer.last_offset, current.ledger_id, intent.object_key, footer.object_size,
            footer.data_length, footer.max_timestamp, footer.checksum, self._clock_ms(), len(writer.aborted),
            min((t[1] for t in writer.aborted), default=-1),
        )  # fmt: skip
        committed = await access.update(
            lambda s: _mark_offloaded(s, current.ledger_id),
            checks=[Check(intent_key, intent_version), Check(segment_key, 0)],
            puts=[Put(segment_key, record.encode())],
            deletes=[intent_key],
        )
        if committed is None:  # the ledger left the log (retention, DeleteRecords) while we uploaded
            await self._abandon(topic_id, partition, current.ledger_id)
            return None
        self._step("committed")
        listener = self._listeners.get((topic_id, partition))
        if listener is not None:
            listener(record)
        self._snapshots[(topic_id, partition)] = (record.last_offset, writer.snapshot())
        owner = streamed.source == "owner"
        self._stats = replace(
            self._stats, segments=self._stats.segments + 1, bytes=self._stats.bytes + record.size,
            from_owner=self._stats.from_owner + owner, from_bookies=self._stats.from_bookies + (not owner),
        )  # fmt: skip
        log.info(
            "offloaded ledger %d of %s/%d (from the %s): offsets %d..%d, %d bytes -> %s",
            current.ledger_id, topic_id, partition, streamed.source, record.base_offset, record.last_offset,
            record.size, record.object_key,
        )  # fmt: skip
        await self._finish(topic_id, partition, current)
        return record

    async def _retire_empty(self, topic_id: str, partition: int, ref: LedgerRef) -> None:
        """A closed ledger holding no records: nothing to upload; mark it, delete it, drop it."""
        try:
            reader = await self._ledgers.open_ledger(ref.ledger_id, recover=False)
        except NoSuchLedger:
            pass
        else:
            info = reader.info
            await reader.close()
            if info.state is not LedgerState.CLOSED or info.last_entry_id >= 0:
                raise OffloadError(f"ledger {ref.ledger_id} is recorded empty but is {info.state.value} with "
                                   f"{info.last_entry_id + 1} entries")  # fmt: skip
        await self.access(topic_id, partition).update(lambda s: _mark_offloaded(s, ref.ledger_id))
        self._step("committed")
        await self._finish(topic_id, partition, ref)

    async def _stream(
        self, topic_id: str, partition: int, ref: LedgerRef, key: str, aborted: tuple[tuple[int, int, int], ...]
    ) -> Streamed:
        """Build the segment of a closed ledger (its entries checked against its ref) and stream it to ``key``:
        from the owner's bytes when this broker has them all, else from the bookies."""
        producers = await self._base_snapshot(topic_id, partition, ref.first_offset)
        spec = BuildSpec(ref, producers, aborted, self._config.index_interval, self._config.read_entries)
        kept = await owner_source(self._ledgers, self.owner_bytes, ref)
        if kept is not None:
            try:
                streamed = await self._upload(key, spec, owner_entries(kept), "owner")
            except BuildError as exc:
                log.warning("ledger %d of %s/%d: the owner's bytes do not make its segment (%s); reading the "
                            "bookies", ref.ledger_id, topic_id, partition, exc)  # fmt: skip
            else:
                self.owner_bytes.drop(ref.ledger_id)
                return streamed
            self.owner_bytes.drop(ref.ledger_id)
        try:
            return await self._upload(key, spec, bookie_entries(self._ledgers, ref, spec.read_entries), "bookies")
        except BuildError as exc:
            raise OffloadError(str(exc)) from exc

    async def _base_snapshot(
        self, topic_id: str, partition: int, first_offset: int
    ) -> tuple[ProducerSnapshotEntry, ...]:
        """The producer state just before ``first_offset``: the previous segment's snapshot."""
        cached = self._snapshots.get((topic_id, partition))
        if cached is not None and cached[0] == first_offset - 1:
            return cached[1]
        for record in reversed(await list_segments(self._store, self._keys, topic_id, partition)):
            if record.last_offset == first_offset - 1:
                try:
                    tail = bytes(await self._objects.get_range(
                        record.object_key, record.data_length, record.size - record.data_length
                    ))
                except ObjectNotFound:  # retention removed it meanwhile: its producers' state went with it
                    log.warning("previous segment %s is gone; offloading without its producer state", record)
                    return ()
                try:
                    footer, _ = parse_tail(tail, record.size, record.data_length)
                    return parse_snapshot(tail, footer)
                except CorruptSegment as exc:
                    raise OffloadError(f"previous segment {record.object_key}: {exc}") from exc
            if record.last_offset < first_offset:
                break
        return ()

    async def _upload(self, key: str, spec: BuildSpec, entries: EntrySource, source: str) -> Streamed:
        """Create the object from a stream; an existing valid segment of the same ledger counts as done."""
        stream = SegmentStream(spec, entries)
        try:
            return Streamed(await upload_stream(self._objects, key, stream), stream.writer, source)
        except ObjectExists:
            if stream.footer is None:
                raise
            ours = stream.footer
        try:
            theirs = await asyncio.to_thread(verify_object, await self._objects.get(key))
            if (theirs.ledger_id, theirs.base_offset, theirs.last_offset, theirs.data_length) == (
                ours.ledger_id, ours.base_offset, ours.last_offset, ours.data_length
            ):
                return Streamed(theirs, stream.writer, source)
            reason = "a segment of other offsets"
        except ObjectNotFound:
            reason = "nothing (deleted meanwhile)"
        except CorruptSegment as exc:
            reason = f"a damaged object ({exc})"
        log.warning("segment object %s for ledger %d holds %s; writing it again", key, spec.ref.ledger_id, reason)
        self._stats = replace(self._stats, reuploads=self._stats.reuploads + 1)
        await self._objects.delete([key])
        again = SegmentStream(spec, entries)
        return Streamed(await upload_stream(self._objects, key, again), again.writer, source)

    async def _finish(self, topic_id: str, partition: int, ref: LedgerRef) -> None:
        """Delete an offloaded ledger from the bookies, then drop its ref (unless it is the last)."""
        self.owner_bytes.drop(ref.ledger_id)
        try:
            await self._ledgers.delete_ledger(ref.ledger_id)
        except NoSuchLedger:
            pass
        self._step("ledger_deleted")
        await self.access(topic_id, partition).update(lambda s: _drop_offloaded(s, ref.ledger_id))
        self._step("dropped")

    async def _abandon(self, topic_id: str, partition: int, ledger_id: int) -> None:
        """The ledger left the log before it was offloaded: remove its intent and any object it made."""
        self.owner_bytes.drop(ledger_id)
        intent_key = self._keys.offload_intent(topic_id, partition, ledger_id)
        got = await self._store.get(intent_key)
        if got is None:
            return
        intent = OffloadIntent.decode(got.value)
        with contextlib.suppress(VersionConflict):
            await self._store.delete(intent_key, expected_version=got.version)
        await self._objects.delete([intent.object_key])
        log.info("ledger %d of %s/%d left the log before offload; intent removed", ledger_id, topic_id, partition)

    # --- garbage collection ----------------------------------------------------------------------
    async def collect_orphans(self, topic_id: str, partition: int) -> list[str]:
        """Delete the partition's objects that no segment key and no live intent names; returns their keys."""
        deleted = await collect_orphans(
            self._store, self._keys, self._objects, self.access(topic_id, partition), topic_id, partition
        )
        self._stats = replace(self._stats, orphans_deleted=self._stats.orphans_deleted + len(deleted))
        return deleted


def _aborted_in(state: PartitionState, ref: LedgerRef) -> tuple[tuple[int, int, int], ...]:
    """The aborted transactions whose ABORT marker is in ``ref``'s offsets: the partition state indexes them
    until the ledger is offloaded (it recorded them when the ledger closed), its segment from then on."""
    return tuple(t for t in state.txn_aborted if ref.first_offset <= t[2] <= ref.last_offset)


def _find(state: PartitionState, ledger_id: int) -> LedgerRef | None:
    return next((r for r in state.ledgers if r.ledger_id == ledger_id), None)


def _mark_offloaded(state: PartitionState, ledger_id: int) -> PartitionState | None:
    ref = _find(state, ledger_id)
    if ref is None or ref.offloaded:
        return None
    marked = state.with_ledgers(tuple(replace(r, offloaded=True) if r is ref else r for r in state.ledgers))
    return marked.with_txns_trimmed()  # the segment indexes the ledger's aborted transactions from now on


def _drop_offloaded(state: PartitionState, ledger_id: int) -> PartitionState | None:
    refs = state.ledgers
    keep = tuple(r for i, r in enumerate(refs) if not (r.ledger_id == ledger_id and r.offloaded and i < len(refs) - 1))
    return None if len(keep) == len(refs) else state.with_ledgers(keep)
