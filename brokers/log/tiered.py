"""The tiered side of a partition log: the offloader's access to its state, and reads from segments.

The partition log is the only writer of its partition's state while it owns it, so the offloader and
retention change that state through the log (``PartitionStateAccess``: under the log's lock, with its cached
version, updating its cached state) — a commit of theirs never makes the log's next compare-and-swap fail.

Reads go tail cache → ledger (refs not offloaded) → segments (``PartitionSegments``) for offsets below the
first ledger not offloaded. A ledger read may fail with NoSuchLedger, or NoSuchEntry from a bookie that has
already dropped the ledger's entries, when the offloader deleted the ledger just after the read was routed to
it: the read is routed again, to the segment (and after ``READ_ATTEMPTS`` the client gets a retriable
KAFKA_STORAGE_ERROR, never an internal error).

An object store that fails or does not answer while offloaded data is read: the segment read is retried
with a backoff (0.1 s doubling to 1 s) for at most ``SEGMENT_READ_BOUND_S`` in all, each attempt bounded
by what is left of it (``SEGMENT_READ_BOUND_DOWN_S`` while the last read failed and none has worked since,
so that a fetch of many partitions still answers in time), then the fetch gets KAFKA_STORAGE_ERROR for the
partition (retriable: clients fetch again and resume once the store answers), never an empty success. Each
failed read counts in ``ReadFailures`` (the metric ``tidelog_tiered_read_failures_total``). A stalled GET
keeps going in the block cache after the attempt gives up (the cache shields its loads), so a later fetch
picks up its result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from brokers.codec.batch import iter_headers
from brokers.log.inflight import PendingEntry
from brokers.log.lookup import LedgerLookup
from brokers.log.types import LogError
from metadata.api import Check, MetadataStore, Put, VersionConflict
from metadata.keys import Keys
from metadata.models import LedgerRef, PartitionState, SegmentRecord
from storage.ledger.api import LedgerClient, LedgerError, LedgerWriter, NoSuchEntry, NoSuchLedger
from storage.objectstore.api import ObjectNotFound, ObjectStore, ObjectStoreError
from storage.offload.offloader import Offloader
from storage.offload.retention import RetentionResult, apply_retention, plan_retention
from storage.offload.state import PartitionMoved, StateChange
from storage.segment.cache import BlockCache
from storage.segment.catalog import PartitionSegments
from storage.segment.format import CorruptSegment

READ_ATTEMPTS = 3
SCAN_BYTES = 1 << 20
SEGMENT_READ_BOUND_S = 5.0  # well inside clients' fetch request timeouts (30 s and more)
SEGMENT_READ_BOUND_DOWN_S = 0.5  # while the store is known down: a fetch of many partitions still answers in time
SEGMENT_RETRY_MIN_S = 0.1
SEGMENT_RETRY_MAX_S = 1.0

log = logging.getLogger(__name__)


class HeldBytes:
    """Bytes of closed ledgers not yet offloaded, summed over a broker's partition logs (backpressure)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class ReadFailures:
    """Segment reads that ended in an error for the client (object store down, slow or damaged data)."""

    __slots__ = ("count", "last_error")

    def __init__(self) -> None:
        self.count = 0
        self.last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Tiering:
    """What partition logs share to offload and to read offloaded data: one per broker."""

    objects: ObjectStore
    cache: BlockCache
    offloader: Offloader
    offload: bool = True
    """False: nothing new is offloaded (segments already there are still read)."""
    high_water_bytes: int = -1
    """When closed ledgers not yet offloaded hold more than this, appends are refused (retriably); -1: never."""
    held: HeldBytes = field(default_factory=HeldBytes)
    read_failures: ReadFailures = field(default_factory=ReadFailures)


class TieredLog:
    """Mixin of PartitionLog: PartitionStateAccess for the offloader and reads across tiers."""

    topic_id: str
    partition: int
    _store: MetadataStore
    _key: str
    _keys: Keys
    _lock: asyncio.Lock
    _state: PartitionState
    _version: int
    _next_offset: int
    _hw: int
    _deposed: bool
    _lookup: LedgerLookup
    _ledgers: LedgerClient
    _writer: LedgerWriter | None
    _tiering: Tiering | None
    _segments: PartitionSegments | None
    _held: dict[int, int]  # closed ledger not offloaded -> its bytes (counted in ``Tiering.held``)

    if TYPE_CHECKING:

        def _depose(self, reason: str) -> None: ...  # writing.py

        async def advance_start(self, offset: int) -> list[int]: ...  # partition.py

        def _txns_moved(self, floor: int) -> None: ...  # partition.py: forget aborted txns below ``floor``

    # --- wiring --------------------------------------------------------------------------------
    async def _attach_tiers(self) -> None:
        """After a load: list the partition's segments and hand the partition to the offloader."""
        tiering = self._tiering
        if tiering is None:
            return
        if self._segments is None:
            self._segments = await PartitionSegments.load(
                self._store, self._keys, self.topic_id, self.partition, tiering.objects, tiering.cache
            )
        tiering.offloader.attach(self.topic_id, self.partition, self, on_segment=self._segment_added)
        for ref in self._state.ledgers:
            if ref.closed and not ref.offloaded and ref.ledger_id not in self._held:
                info = await self._ledgers.ledger_info(ref.ledger_id)
                self._hold(ref.ledger_id, 0 if info is None else info.length)
        self._sync_held()
        if tiering.offload and not self._deposed:
            tiering.offloader.schedule(self.topic_id, self.partition)

    def _segment_added(self, record: SegmentRecord) -> None:
        if self._segments is not None:
            self._segments.add(record)
        # Only now that reads see the segment (not at the commit: update() still awaits after it) do the
        # aborted transactions it indexes leave the log's own index.
        self._txns_moved(min(self._state.txn_floor, record.last_offset + 1))

    def _ledger_closed(self, ledger_id: int, length: int) -> None:
        """A ledger closed: count its bytes as waiting for offload and offload it in the background."""
        tiering = self._tiering
        if tiering is None:
            return
        self._hold(ledger_id, length)
        if tiering.offload and not self._deposed:
            tiering.offloader.schedule(self.topic_id, self.partition)

    def _entry_durable(self, pending: PendingEntry) -> None:
        """An entry is confirmed in its ledger: keep its bytes (the same buffer, no copy) so the ledger's
        segment is built from them rather than read back from the bookies (within the owner-bytes budget)."""
        tiering = self._tiering
        if tiering is not None and tiering.offload and not self._deposed:
            tiering.offloader.owner_bytes.add(
                self.topic_id, self.partition, pending.ledger_id, pending.entry_id, pending.entry
            )

    def _hold(self, ledger_id: int, length: int) -> None:
        if self._tiering is not None and ledger_id not in self._held:
            self._held[ledger_id] = length
            self._tiering.held.bytes += length
            self._tiering.offloader.closed(self.topic_id, self.partition, ledger_id, length)

    def _sync_held(self) -> None:
        """Stop counting ledgers that were offloaded or left the log (all of them once deposed)."""
        if self._tiering is None or not self._held:
            return
        waiting = set() if self._deposed else {r.ledger_id for r in self._state.ledgers if not r.offloaded}
        for ledger_id in [lid for lid in self._held if lid not in waiting]:
            self._tiering.held.bytes -= self._held.pop(ledger_id)

    def _check_backpressure(self) -> None:
        """Refuse appends (retriably: NOT_ENOUGH_REPLICAS, which clients retry) while the bookies hold more
        bytes waiting for offload than the high-water mark; nothing is written then."""
        tiering = self._tiering
        if tiering is None or not tiering.offload or tiering.high_water_bytes < 0:
            return
        held = tiering.held.bytes
        if held > tiering.high_water_bytes:
            raise LogError(
                ErrorCode.not_enough_replicas,
                f"{held} bytes on the bookies wait for offload (high-water mark {tiering.high_water_bytes}); retry",
            )

    async def _detach_tiers(self) -> None:
        self._sync_held()  # deposed: none counted any more
        tiering, segments = self._tiering, self._segments
        if tiering is not None:
            tiering.offloader.detach(self.topic_id, self.partition)
        if segments is not None:
            await segments.close()

    @property
    def segments(self) -> tuple[SegmentRecord, ...]:
        """The offloaded segments this log reads from (oldest first)."""
        return () if self._segments is None else self._segments.records

    @property
    def local_start_offset(self) -> int:
        """The first offset held on the bookies (not offloaded); ListOffsets EARLIEST_LOCAL."""
        return max(self._state.log_start_offset, self._ledger_start(self._live_ledgers()))

    @property
    def tiered_end_offset(self) -> int:
        """The offset after the last offloaded record (the log start offset when nothing is offloaded)."""
        end = None if self._segments is None else self._segments.end_offset
        return self._state.log_start_offset if end is None else max(end, self._state.log_start_offset)

    # --- PartitionStateAccess ------------------------------------------------------------------
    async def current(self) -> PartitionState:
        """The partition's state as this owner holds it."""
        if self._deposed:
            raise PartitionMoved(f"{self.topic_id}/{self.partition} is no longer owned here")
        return self._state

    async def update(
        self,
        change: StateChange,
        *,
        checks: Sequence[Check] = (),
        puts: Sequence[Put] = (),
        deletes: Sequence[str] = (),
    ) -> PartitionState | None:
        """Commit ``change(state)`` with ``puts``/``deletes`` if ``checks`` hold, by compare-and-swap on the
        log's cached version, under its lock. A failed check raises VersionConflict; a changed partition
        key means another broker took over (PartitionMoved, and this log is deposed)."""
        async with self._lock:
            if self._deposed:
                raise PartitionMoved(f"{self.topic_id}/{self.partition} is no longer owned here")
            old = self._state
            new = change(old)
            if new is None:
                return None
            new = new.with_txns_trimmed()  # aborted transactions of a ledger just offloaded: its segment has them
            try:
                self._version = await self._store.commit(
                    [*checks, Check(self._key, self._version)], [*puts, Put(self._key, new.encode())], deletes
                )
            except VersionConflict:
                now = await self._store.get(self._key)
                if (0 if now is None else now.version) != self._version:
                    self._depose("partition state changed under us")
                    raise PartitionMoved(f"{self.topic_id}/{self.partition} was taken over") from None
                raise
            self._state = new
            self._sync_held()
            kept = {r.ledger_id for r in new.ledgers}
            for ref in old.ledgers:
                if ref.ledger_id not in kept:
                    self._lookup.indexes.pop(ref.ledger_id, None)
                    await self._lookup.readers.drop(ref.ledger_id)
            return new

    # --- DeleteRecords and retention -----------------------------------------------------------
    async def delete_records(self, offset: int) -> int:
        """DeleteRecords: move the log start offset to ``offset`` (-1: the high watermark); ledgers and
        segments wholly below it go (metadata first, data after). Returns the new log start offset."""
        if offset == -1:
            offset = self._hw
        if offset < 0:
            raise LogError(ErrorCode.offset_out_of_range, f"cannot delete records before offset {offset}")
        dropped = await self.advance_start(offset)  # OFFSET_OUT_OF_RANGE past the high watermark
        for ledger_id in dropped:
            try:
                await self._ledgers.delete_ledger(ledger_id)
            except NoSuchLedger:
                pass  # offloaded and deleted already
            except LedgerError as e:
                log.warning("%s/%d: could not delete ledger %d: %s", self.topic_id, self.partition, ledger_id, e)
        await self.enforce_retention(delete_records_offset=offset)
        return self._state.log_start_offset

    async def enforce_retention(
        self,
        *,
        retention_ms: int = -1,
        retention_bytes: int = -1,
        delete_records_offset: int | None = None,
        now_ms: int | None = None,
    ) -> RetentionResult | None:
        """Delete whole segments by time, by size and below the log start offset (storage/offload/
        retention.py: segment keys and the log start first, objects after). None without segments."""
        tiering, segments = self._tiering, self._segments
        if tiering is None or segments is None or self._deposed or not segments.records:
            return None
        plan = plan_retention(
            segments.records,
            log_start_offset=self._state.log_start_offset,
            now_ms=int(time.time() * 1000) if now_ms is None else now_ms,
            retention_ms=retention_ms,
            retention_bytes=retention_bytes,
            unoffloaded_bytes=self.unoffloaded_bytes,
            delete_records_offset=delete_records_offset,
        )
        if not plan.delete:
            return None
        result = await apply_retention(
            plan, keys=self._keys, objects=tiering.objects, access=self, topic_id=self.topic_id,
            partition=self.partition,
        )  # fmt: skip
        segments.remove(r.base_offset for r in result.removed)
        return result

    @property
    def unoffloaded_bytes(self) -> int:
        """Bytes still only on the bookies: closed ledgers waiting for offload and the open one."""
        tiering = self._tiering
        waiting = 0 if tiering is None else tiering.offloader.backlog(self.topic_id, self.partition).bytes
        writer = self._writer
        return waiting + (writer.length if writer is not None else 0)

    # --- reads ---------------------------------------------------------------------------------
    def _live_ledgers(self) -> tuple[LedgerRef, ...]:
        """Ledger refs read from the bookies (not offloaded)."""
        return tuple(r for r in self._state.ledgers if not r.offloaded)

    def _ledger_start(self, live: Sequence[LedgerRef]) -> int:
        """The first offset read from ledgers; offsets below it are in segments."""
        return live[0].first_offset if live else self._next_offset

    async def _read_tiers(self, offset: int, max_bytes: int, hw: int) -> list[memoryview]:
        """Batches from ``offset`` on (not in the tail cache): from a ledger, or from segments."""
        for _attempt in range(READ_ATTEMPTS):
            live = self._live_ledgers()
            segments = self._segments
            if segments is not None and offset < self._ledger_start(live):
                got = await self._from_segments(segments, offset, max_bytes)
                if got:
                    return got
            if not live:
                return []
            try:
                return await self._lookup.read(live, offset, max_bytes, hw)
            except (NoSuchLedger, NoSuchEntry):
                continue  # offloaded and deleted since the read was routed: its segment has it now
        raise LogError(ErrorCode.kafka_storage_error, f"offset {offset} moved between tiers repeatedly; retry")

    async def _from_segments(self, segments: PartitionSegments, offset: int, max_bytes: int) -> list[memoryview]:
        """A segment read, retried within ``SEGMENT_READ_BOUND_S``; object store trouble then becomes a
        retriable KAFKA_STORAGE_ERROR, and a segment that retention removed meanwhile OFFSET_OUT_OF_RANGE."""
        down = self._tiering is not None and self._tiering.read_failures.last_error is not None
        deadline = time.monotonic() + (SEGMENT_READ_BOUND_DOWN_S if down else SEGMENT_READ_BOUND_S)
        backoff = SEGMENT_RETRY_MIN_S
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    got = await segments.read(offset, max_bytes)
                self._read_succeeded()
                return got
            except ObjectNotFound:
                start = self._state.log_start_offset
                if offset < start:
                    raise LogError(
                        ErrorCode.offset_out_of_range, f"offset {offset} is below the start {start}"
                    ) from None
                self._read_failed(offset, "segment missing")
                raise LogError(ErrorCode.kafka_storage_error, f"segment holding offset {offset} is missing") from None
            except CorruptSegment as e:
                self._read_failed(offset, repr(e))
                raise LogError(ErrorCode.kafka_storage_error, f"segment read failed: {e}") from None
            except (ObjectStoreError, TimeoutError) as e:
                error = e if isinstance(e, ObjectStoreError) else "no answer within the read bound"
                if time.monotonic() + backoff >= deadline:
                    self._read_failed(offset, str(error))
                    raise LogError(ErrorCode.kafka_storage_error, f"object store read failed: {error}") from None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, SEGMENT_RETRY_MAX_S)

    async def _segment_aborted(self, start: int, end: int) -> list[tuple[int, int]]:
        """(producer_id, first offset) of the aborted transactions overlapping [start, end) that segments index
        (markers at or after ``start``, first offsets below ``end``); only the tails of segments whose record
        says they index one that may qualify are read. Object store trouble: KAFKA_STORAGE_ERROR (retriable)."""
        segments = self._segments
        if segments is None:
            return []
        out: list[tuple[int, int]] = []
        for record in segments.records:
            if not record.aborted or record.last_offset < start or record.aborted_first >= end:
                continue
            try:
                async with asyncio.timeout(SEGMENT_READ_BOUND_S):
                    entries = await segments.reader(record).aborted_transactions()
            except (ObjectStoreError, CorruptSegment, TimeoutError) as e:
                self._read_failed(start, repr(e))
                raise LogError(
                    ErrorCode.kafka_storage_error, f"aborted-transaction index of a segment unreadable: {e!r}"
                ) from None
            out.extend((pid, first) for pid, first, last in entries if last >= start and first < end)
        return out

    def _read_failed(self, offset: int, error: str) -> None:
        """Count a segment read that failed for the client; one warning when a run of failures starts."""
        tiering = self._tiering
        if tiering is None:
            return
        failures = tiering.read_failures
        if failures.last_error is None:
            log.warning("%s/%d: segment read at offset %d failed: %s (fetches get KAFKA_STORAGE_ERROR until the "
                        "object store answers)", self.topic_id, self.partition, offset, error)  # fmt: skip
        failures.count += 1
        failures.last_error = error

    def _read_succeeded(self) -> None:
        tiering = self._tiering
        if tiering is not None and tiering.read_failures.last_error is not None:
            tiering.read_failures.last_error = None
            log.warning("%s/%d: segment reads work again", self.topic_id, self.partition)

    async def _find_timestamp_tiers(self, timestamp: int, hw: int) -> memoryview | None:
        for _attempt in range(READ_ATTEMPTS):
            segments = self._segments
            if segments is not None:
                try:
                    found = await self._segment_timestamp(segments, timestamp)
                except (ObjectStoreError, CorruptSegment) as e:
                    raise LogError(ErrorCode.kafka_storage_error, f"object store read failed: {e}") from None
                if found is not None:
                    return found
            try:
                return await self._lookup.find_by_timestamp(self._live_ledgers(), timestamp, hw)
            except (NoSuchLedger, NoSuchEntry):
                continue
        raise LogError(ErrorCode.kafka_storage_error, "ledgers moved to segments repeatedly; retry")

    async def _segment_timestamp(self, segments: PartitionSegments, timestamp: int) -> memoryview | None:
        """Batches holding the first record at or after the log start with a timestamp >= ``timestamp``."""
        start = self._state.log_start_offset
        for record in segments.records:
            if record.last_offset < start or record.max_timestamp < timestamp:
                continue
            if record.base_offset >= start:
                found = await segments.reader(record).find_timestamp(timestamp)
                if found is not None:
                    return found
                continue
            offset = start  # DeleteRecords cut this segment: only its batches from the start count
            while offset <= record.last_offset:
                batches = await self._from_segments(segments, offset, SCAN_BYTES)
                if not batches:
                    break
                for data in batches:
                    if any(h.max_timestamp >= timestamp and h.last_offset >= start for h in iter_headers(data)):
                        return data
                offset = iter_headers(batches[-1])[-1].last_offset + 1
        return None

    async def _max_timestamp_tiers(self, hw: int) -> memoryview | None:
        for _attempt in range(READ_ATTEMPTS):
            live = self._live_ledgers()
            best = _newest(self.segments)
            try:
                live_max = -1
                for ref in live:
                    live_max = max(live_max, (await self._lookup.index_of(ref)).max_timestamp)
                if best is None or self._segments is None or best.max_timestamp < live_max:
                    return await self._lookup.max_timestamp_entry(live, hw)
                return await self._segments.reader(best).find_timestamp(best.max_timestamp)
            except (NoSuchLedger, NoSuchEntry):
                continue
            except (ObjectStoreError, CorruptSegment) as e:
                raise LogError(ErrorCode.kafka_storage_error, f"object store read failed: {e}") from None
        raise LogError(ErrorCode.kafka_storage_error, "ledgers moved to segments repeatedly; retry")


def _newest(records: Sequence[SegmentRecord]) -> SegmentRecord | None:
    """The first segment holding the largest timestamp."""
    best: SegmentRecord | None = None
    for record in records:
        if best is None or record.max_timestamp > best.max_timestamp:
            best = record
    return best
