"""The managed partition log: a chain of ledgers, offsets assigned by the owner, a high watermark.

Appends assign offsets and hand the entry to the current ledger writer under a lock that is only
contended while a ledger rolls over; confirmations arrive in entry order and move the high watermark,
which wakes waiting fetches. After a crash the tail ledger is recovered with fencing (see ``load``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from dataclasses import dataclass, replace

from kio.schema.errors import ErrorCode

from brokers.codec.batch import BatchHeader, assign_offsets, iter_headers
from brokers.log.cache import TailCache
from brokers.log.index import LedgerIndex
from brokers.log.producers import ProducerStateError, ProducerTable
from brokers.log.reader import LedgerReaders
from metadata.api import MetadataStore, VersionConflict
from metadata.keys import Keys
from metadata.models import LedgerRef, PartitionState
from storage import log_entry
from storage.ledger.api import LedgerClient, LedgerError, LedgerFenced, LedgerWriter

log = logging.getLogger(__name__)


class LogError(Exception):
    """An append or read the log refuses; carries the Kafka error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Ledger and cache settings of partition logs."""

    rollover_bytes: int = 64 * 1024 * 1024
    rollover_ms: int = 4 * 3600 * 1000
    ensemble_size: int = 1
    write_quorum: int = 1
    ack_quorum: int = 1
    tail_cache_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    log_start_offset: int


@dataclass(frozen=True, slots=True)
class ReadResult:
    batches: list[memoryview]
    high_watermark: int
    log_start_offset: int


class PartitionLog:
    """One partition's managed log, owned by this broker."""

    def __init__(
        self,
        store: MetadataStore,
        keys: Keys,
        ledgers: LedgerClient,
        topic_id: str,
        partition: int,
        config: LogConfig,
    ) -> None:
        self.topic_id = topic_id
        self.partition = partition
        self._store = store
        self._key = keys.partition(topic_id, partition)
        self._ledgers = ledgers
        self._config = config
        self._lock = asyncio.Lock()
        self._state = PartitionState()
        self._version = 0
        self._writer: LedgerWriter | None = None
        self._writer_opened = 0.0
        self._writer_failed: BaseException | None = None
        self._next_offset = 0
        self._hw = 0
        self._cache = TailCache(config.tail_cache_bytes)
        self._indexes: dict[int, LedgerIndex] = {}
        self._readers = LedgerReaders(ledgers)
        self._producers = ProducerTable()
        self._waiters: set[asyncio.Future[None]] = set()
        self._deposed = False

    # --- state ---------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._state.epoch

    @property
    def high_watermark(self) -> int:
        return self._hw

    @property
    def log_start_offset(self) -> int:
        return self._state.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._next_offset

    @property
    def ledgers(self) -> tuple[LedgerRef, ...]:
        return self._state.ledgers

    async def load(self) -> None:
        """Take the partition over: bump the epoch, recover any open tail ledger, rebuild state."""
        async with self._lock:
            await self._load_locked()

    async def _load_locked(self) -> None:
        current = await self._store.get(self._key)
        if current is None:
            state, version = PartitionState(epoch=0), 0
        else:
            state, version = PartitionState.decode(current.value), current.version
        producers = ProducerTable(state.producers)
        ledgers: list[LedgerRef] = []
        for ref in state.ledgers:
            if ref.closed:
                ledgers.append(ref)
                continue
            ledgers.append(await self._recover_ledger(ref, producers))
        state = replace(state, epoch=state.epoch + 1, ledgers=tuple(ledgers), producers=producers.snapshot())
        self._version = await self._store.put(self._key, state.encode(), expected_version=version)
        self._state = state
        self._producers = producers
        self._next_offset = self._hw = max(state.end_offset, state.log_start_offset)
        self._writer = None
        self._writer_failed = None
        self._cache.clear()
        self._wake()

    async def _recover_ledger(self, ref: LedgerRef, producers: ProducerTable) -> LedgerRef:
        """Fence and close a ledger left open by a dead writer; index it and replay producer state."""
        reader = await self._ledgers.open_ledger(ref.ledger_id, recover=True)
        last_entry = reader.info.last_entry_id
        index = LedgerIndex()
        last_offset, max_ts = ref.first_offset - 1, -1
        first = 0
        while first <= last_entry:
            last = min(last_entry, first + 63)
            for entry in await reader.read(first, last):
                head = log_entry.decode_header(entry)
                index.add(head.first_offset, head.last_offset, head.max_timestamp)
                last_offset, max_ts = head.last_offset, max(max_ts, head.max_timestamp)
                for batch in iter_headers(log_entry.batches_of(entry)):
                    producers.record(batch, batch.base_offset, batch.last_offset)
            first = last + 1
        await reader.close()
        self._indexes[ref.ledger_id] = index
        log.info(
            "recovered ledger %d of %s/%d: %d entries, offsets %d..%d",
            ref.ledger_id, self.topic_id, self.partition, last_entry + 1, ref.first_offset, last_offset,
        )
        return replace(ref, last_offset=last_offset, max_timestamp=max_ts, closed=True)

    async def _commit_state(self, state: PartitionState) -> None:
        try:
            self._version = await self._store.put(self._key, state.encode(), expected_version=self._version)
        except VersionConflict:
            self._deposed = True
            raise LogError(ErrorCode.not_leader_or_follower, "partition state changed under us") from None
        self._state = state

    # --- append --------------------------------------------------------------------------------
    async def append(self, records: bytes, headers: list[BatchHeader]) -> asyncio.Future[AppendResult]:
        """Assign offsets to validated batches and hand them to the ledger writer.

        Returns once the entry is queued (so callers can keep arrival order); the returned future
        resolves when the entry is durable on an ack quorum of bookies, or fails with LogError.
        """
        if self._deposed:
            raise LogError(ErrorCode.not_leader_or_follower, "this broker no longer owns the partition")
        result: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        async with self._lock:
            if self._writer_failed is not None:
                await self._load_locked()
            writer = await self._writer_for_append()
            try:
                duplicate = self._check_producers(headers)
            except ProducerStateError as e:
                raise LogError(e.code, str(e)) from None
            if duplicate is not None:
                result.set_result(AppendResult(duplicate, self._state.log_start_offset))
                return result
            base = self._next_offset
            entry = log_entry.allocate(records)
            end = assign_offsets(entry, headers, base, self._state.epoch, log_entry.HEADER_SIZE)
            first_head = headers[0]
            max_ts = max(h.max_timestamp for h in headers)
            log_entry.seal(
                entry,
                log_entry.EntryHeader(
                    base, end - 1, max_ts, first_head.producer_id, first_head.producer_epoch,
                    first_head.base_sequence, headers[-1].last_sequence, len(headers),
                ),
            )
            try:
                future = writer.append(memoryview(entry))
            except LedgerFenced:
                self._deposed = True
                raise LogError(ErrorCode.not_leader_or_follower, "ledger fenced: ownership lost") from None
            except LedgerError as e:
                self._writer_failed = e
                raise LogError(ErrorCode.not_enough_replicas, f"write-ahead tier refused the entry: {e}") from e
            self._next_offset = end
            offset = base
            for head in headers:
                self._producers.record(head, offset, offset + head.last_offset_delta)
                offset += head.record_span
            self._indexes[writer.ledger_id].add(base, end - 1, max_ts)
            view = log_entry.batches_of(entry)
            future.add_done_callback(lambda f: self._on_confirm(f, base, end - 1, view, result))
        return result

    def _check_producers(self, headers: list[BatchHeader]) -> int | None:
        duplicate: int | None = None
        for head in headers:
            found = self._producers.check(head)
            if found is not None and duplicate is None:
                duplicate = found
        return duplicate

    def _on_confirm(
        self,
        future: asyncio.Future[int],
        first: int,
        last: int,
        view: memoryview,
        result: asyncio.Future[AppendResult],
    ) -> None:
        error = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if error is None and self._writer_failed is None:
            self._cache.add(first, last, view)
            self._hw = last + 1
            self._wake()
            if not result.done():
                result.set_result(AppendResult(first, self._state.log_start_offset))
            return
        if error is not None and self._writer_failed is None:
            self._writer_failed = error
            self._cache.truncate_after(first)
        if result.done():
            return
        if isinstance(error, LedgerFenced):
            self._deposed = True
            result.set_exception(LogError(ErrorCode.not_leader_or_follower, "ledger fenced: ownership lost"))
        else:
            result.set_exception(
                LogError(ErrorCode.not_enough_replicas, f"write-ahead tier refused the entry: {error!r}")
            )

    async def _writer_for_append(self) -> LedgerWriter:
        writer = self._writer
        if writer is not None:
            age_ms = (time.monotonic() - self._writer_opened) * 1000
            if writer.length < self._config.rollover_bytes and age_ms < self._config.rollover_ms:
                return writer
        return await self._roll()

    async def _roll(self) -> LedgerWriter:
        """Close the current ledger (if any) and start a new one, recording both by compare-and-swap."""
        await self._close_writer()
        ledgers = list(self._state.ledgers)
        config = self._config
        writer = await self._ledgers.create_ledger(config.ensemble_size, config.write_quorum, config.ack_quorum)
        ledgers.append(LedgerRef(writer.ledger_id, self._next_offset))
        await self._commit_state(
            replace(self._state, ledgers=tuple(ledgers), producers=self._producers.snapshot())
        )
        self._indexes[writer.ledger_id] = LedgerIndex()
        self._writer = writer
        self._writer_opened = time.monotonic()
        return writer

    async def advance_start(self, offset: int) -> list[int]:
        """Move the log start offset up to ``offset`` (DeleteRecords, snapshots of internal topics).

        Returns the ids of ledgers now wholly below the start, dropped from the log: the caller deletes
        them from the bookies once this returns (metadata first, data after).
        """
        async with self._lock:
            if offset > self._hw:
                raise LogError(ErrorCode.offset_out_of_range, f"offset {offset} is past the high watermark {self._hw}")
            if offset <= self._state.log_start_offset:
                return []
            keep: list[LedgerRef] = []
            dropped: list[int] = []
            last = len(self._state.ledgers) - 1
            for i, ref in enumerate(self._state.ledgers):
                if i < last and ref.closed and ref.last_offset < offset:
                    dropped.append(ref.ledger_id)
                else:
                    keep.append(ref)
            await self._commit_state(replace(self._state, log_start_offset=offset, ledgers=tuple(keep)))
            for ledger_id in dropped:
                self._indexes.pop(ledger_id, None)
                await self._readers.drop(ledger_id)
            self._wake()
            return dropped

    async def roll_if_aged(self) -> bool:
        """Close the open ledger if it is older than ``rollover_ms`` (the next append opens a new one)."""
        writer = self._writer
        if writer is None or (time.monotonic() - self._writer_opened) * 1000 < self._config.rollover_ms:
            return False
        async with self._lock:
            if self._writer is not writer or self._writer_failed is not None:
                return False
            await self._close_writer()
            return True

    async def _close_writer(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self._writer = None
        await writer.close()
        ledgers = list(self._state.ledgers)
        index = self._indexes[writer.ledger_id]
        ledgers[-1] = replace(
            ledgers[-1], last_offset=self._next_offset - 1, max_timestamp=index.max_timestamp, closed=True
        )
        await self._commit_state(replace(self._state, ledgers=tuple(ledgers), producers=self._producers.snapshot()))

    async def close(self) -> None:
        """Close the open ledger cleanly (on shutdown or when handing the partition over)."""
        async with self._lock:
            if self._writer_failed is None:
                await self._close_writer()
            await self._readers.close()
            self._deposed = True
            self._wake()

    # --- reads ---------------------------------------------------------------------------------
    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def add_waiter(self, fut: asyncio.Future[None]) -> None:
        """Resolve ``fut`` at the next high-watermark move."""
        self._waiters.add(fut)

    def discard_waiter(self, fut: asyncio.Future[None]) -> None:
        self._waiters.discard(fut)

    async def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Batches from the one holding ``offset`` on, up to ``max_bytes`` (at least one batch)."""
        hw, start = self._hw, self._state.log_start_offset
        if offset < start or offset > hw:
            raise LogError(
                ErrorCode.offset_out_of_range, f"offset {offset} outside {start}..{hw}"
            )
        if offset == hw:
            return ReadResult([], hw, start)
        cached = self._cache.read(offset, max_bytes, hw)
        if cached is not None:
            return ReadResult(cached, hw, start)
        return ReadResult(await self._read_ledgers(offset, max_bytes, hw), hw, start)

    def _ledger_for_offset(self, offset: int) -> LedgerRef:
        ledgers = self._state.ledgers
        i = bisect_right([r.first_offset for r in ledgers], offset) - 1
        while i > 0 and ledgers[i].first_offset == ledgers[i - 1].first_offset:
            i -= 1  # empty ledgers share their successor's first offset
        while i < len(ledgers) - 1 and ledgers[i].closed and ledgers[i].last_offset < offset:
            i += 1
        return ledgers[max(i, 0)]

    async def _index_of(self, ref: LedgerRef) -> LedgerIndex:
        index = self._indexes.get(ref.ledger_id)
        if index is None:
            index = LedgerIndex()
            reader = await self._readers.get(ref.ledger_id)
            last_entry = reader.info.last_entry_id
            first = 0
            while first <= last_entry:
                last = min(last_entry, first + 63)
                for entry in await reader.read(first, last):
                    head = log_entry.decode_header(entry)
                    index.add(head.first_offset, head.last_offset, head.max_timestamp)
                first = last + 1
            self._indexes[ref.ledger_id] = index
        return index

    async def _read_ledgers(self, offset: int, max_bytes: int, below: int) -> list[memoryview]:
        out: list[memoryview] = []
        total = 0
        while offset < below and total < max_bytes:
            ref = self._ledger_for_offset(offset)
            index = await self._index_of(ref)
            if not len(index) or index.last_offset < offset:
                break
            entry_id = index.entry_for_offset(offset)
            last_id = min(len(index) - 1, entry_id + 15, index.entry_for_offset(below - 1))
            reader = await self._readers.get(ref.ledger_id)
            for entry in await reader.read(entry_id, last_id):
                head = log_entry.decode_header(entry)
                if head.last_offset >= below:
                    return out
                data = log_entry.batches_of(entry)
                if out and total + len(data) > max_bytes:
                    return out
                out.append(data)
                total += len(data)
                offset = head.last_offset + 1
        return out

    async def entries_from(self, offset: int) -> tuple[int, list[bytes]] | None:
        """The entry holding ``offset`` and the rest of its ledger's entries (for timestamp scans)."""
        ref = self._ledger_for_offset(offset)
        index = await self._index_of(ref)
        if not len(index):
            return None
        entry_id = index.entry_for_offset(offset)
        reader = await self._readers.get(ref.ledger_id)
        return entry_id, await reader.read(entry_id, len(index) - 1)

    async def find_by_timestamp(self, timestamp: int) -> memoryview | None:
        """The entry batches holding the first record with a timestamp >= ``timestamp``, if any."""
        for ref in self._state.ledgers:
            index = await self._index_of(ref)
            if index.max_timestamp < timestamp:
                continue
            entry_id = index.entry_for_timestamp(timestamp)
            if entry_id is None:
                continue
            reader = await self._readers.get(ref.ledger_id)
            entry = (await reader.read(entry_id, entry_id))[0]
            if log_entry.decode_header(entry).last_offset >= self._hw:
                return None
            return log_entry.batches_of(entry)
        return None

    async def max_timestamp_entry(self) -> memoryview | None:
        """The entry batches holding the record with the largest timestamp (the first such)."""
        best: tuple[int, int, int] | None = None  # max_ts, ledger position, entry id
        for pos, ref in enumerate(self._state.ledgers):
            index = await self._index_of(ref)
            if len(index) and (best is None or index.max_timestamp > best[0]):
                entry_id = index.entry_for_timestamp(index.max_timestamp)
                if entry_id is not None:
                    best = (index.max_timestamp, pos, entry_id)
        if best is None:
            return None
        reader = await self._readers.get(self._state.ledgers[best[1]].ledger_id)
        entry = (await reader.read(best[2], best[2]))[0]
        if log_entry.decode_header(entry).last_offset >= self._hw:
            return None
        return log_entry.batches_of(entry)
