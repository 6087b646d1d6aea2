"""The managed partition log: a chain of ledgers, offsets assigned by the owner, a high watermark.

Appends assign offsets and hand the entry to the current ledger writer under a lock that is only
contended while a ledger rolls over or is replaced; confirmations arrive in entry order and move the high
watermark over confirmed, contiguous entries, which wakes waiting fetches. The write side — confirmations,
rollover, and carrying on in a new ledger when bookies fail — is ``writing.py``; ledger indexes and reads
are ``lookup.py``; offload (closed ledgers become segments) and reads from segments are ``tiered.py``.
After a crash the tail ledger is recovered with fencing (see ``load``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from kio.schema.errors import ErrorCode

from brokers.codec.batch import BatchHeader, assign_offsets, iter_headers
from brokers.codec.batch_limits import take_batches
from brokers.codec.control import build_marker
from brokers.log.cache import TailBudget, TailCache
from brokers.log.index import LedgerIndex
from brokers.log.inflight import InflightEntries, PendingEntry
from brokers.log.lookup import LedgerLookup, scan_ledger
from brokers.log.producers import ActiveProducer, ProducerStateError, ProducerTable
from brokers.log.tiered import TieredLog, Tiering
from brokers.log.txn_state import MAX_INDEXED_ABORTS, MarkerFenced, TxnState
from brokers.log.types import AppendResult, LogConfig, LogError, LogMemory, NotLeader, ReadResult
from brokers.log.writing import RETRY_MIN_S, LedgerWriting, unavailable_code
from metadata.api import MetadataError, MetadataStore, VersionConflict
from metadata.keys import Keys
from metadata.models import LedgerRef, PartitionState
from storage import log_entry
from storage.ledger.api import LedgerClient, LedgerError, LedgerWriter
from storage.segment.catalog import PartitionSegments

__all__ = ["AppendResult", "LogConfig", "LogError", "NotLeader", "PartitionLog", "ReadResult", "Tiering"]

log = logging.getLogger(__name__)

OPEN_TXN = object()
"""``verification_guard``'s answer when the producer's transaction is already open on the partition."""
MAX_GUARDS = 10_000
"""Verifications outstanding per partition (a guard not used by an append is dropped, oldest first)."""

SETTLE_S = 10.0
"""After a load that found data (a takeover, a restart) or an append refused before it was recorded, how long
a batch ahead of its producer's expected sequence is refused as retriable rather than out of order
(brokers/log/producers.py ``check``)."""


class PartitionLog(LedgerWriting, TieredLog):
    """One partition's managed log, owned by this broker."""

    def __init__(
        self,
        store: MetadataStore,
        keys: Keys,
        ledgers: LedgerClient,
        topic_id: str,
        partition: int,
        config: LogConfig,
        tiering: Tiering | None = None,
        *,
        tail_budget: TailBudget | None = None,
    ) -> None:
        self.topic_id = topic_id
        self.partition = partition
        self._store = store
        self._keys = keys
        self._key = keys.partition(topic_id, partition)
        self._tiering = tiering
        self._segments: PartitionSegments | None = None
        self._held: dict[int, int] = {}
        self._ledgers = ledgers
        self._config = config
        self._lock = asyncio.Lock()
        self._state = PartitionState()
        self._version = 0
        self._writer: LedgerWriter | None = None
        self._writer_opened = 0.0
        self._sent = 0  # entries written to the current writer (its next entry id)
        self._generation = 0  # bumped when a writer is retired: its late outcomes are ignored
        self._inflight = InflightEntries()
        self._failed: BaseException | None = None  # why the current ledger must be replaced
        self._broken: int | None = None  # a failed ledger not yet closed by recovery
        self._retry_at = 0.0
        self._backoff = RETRY_MIN_S
        self._repair_task: asyncio.Task[None] | None = None
        self._degraded = False
        self._upgrade_at = 0.0
        self._next_offset = 0
        self._hw = 0
        self._cache = TailCache(config.tail_cache_bytes, tail_budget)
        self._lookup = LedgerLookup(ledgers)
        self._producers = ProducerTable()  # every appended batch (sequence checks)
        self._settle_until = 0.0  # time.monotonic() until which a sequence gap is retriable (ProducerTable.check)
        self._durable = ProducerTable()  # confirmed batches only (what snapshots record)
        self._txns = TxnState(index=False)  # transactions as of every appended batch (is one open here?)
        self._durable_txns = TxnState()  # as of confirmed batches: LSO, aborted index, snapshots
        self._guards: dict[int, object] = {}  # KIP-890: producer id -> the verification its next append needs
        self._aborts_at_roll = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._deposed = False
        self._spare: tuple[LedgerWriter, bool] | None = None
        self._spare_task: asyncio.Task[None] | None = None
        self.ledger_switches = 0
        """How many times a failed ledger was replaced (observability, tests)."""

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

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """OffsetForLeaderEpoch: (leader epoch, end offset) of ``epoch`` from the epoch history (no I/O)."""
        return self._state.end_offset_for(epoch, self._next_offset)

    @property
    def inflight(self) -> int:
        """Entries given offsets but not yet confirmed."""
        return len(self._inflight)

    def memory(self) -> LogMemory:
        """What this log holds in memory now (no I/O; for ``tidelog_partition_memory_bytes``)."""
        return LogMemory(
            self._cache.memory_bytes, self._inflight.memory_bytes,
            self._producers.memory_bytes() + self._durable.memory_bytes(),
        )  # fmt: skip

    def active_producers(self) -> tuple[ActiveProducer, ...]:
        """DescribeProducers: the idempotent producers this log remembers, as Kafka's leader reports them
        (its producer state includes appended batches not yet acknowledged, so this reads the append-side
        table, not the durable one snapshots come from)."""
        return self._producers.active()

    async def load(self, taken: tuple[int, int] | None = None) -> None:
        """Take the partition over: bump the epoch, recover any open tail ledger, rebuild state; then list
        its segments and hand it to the offloader.

        ``taken=(epoch, state_version)``: the partition was already taken by a cluster ownership transaction
        (brokers/cluster/ownership.py), which bumped the epoch itself; the state must still be at that
        version and epoch (else NOT_LEADER_OR_FOLLOWER), and the epoch is not bumped again."""
        async with self._lock:
            await self._load_locked(taken)
        await self._attach_tiers()

    async def _load_locked(self, taken: tuple[int, int] | None = None) -> None:
        current = await self._store.get(self._key)
        if current is None:
            state, version = PartitionState(epoch=0), 0
        else:
            state, version = PartitionState.decode(current.value), current.version
        original = state
        if taken is not None and (version, state.epoch) != (taken[1], taken[0]):
            raise LogError(
                ErrorCode.not_leader_or_follower,
                f"partition changed after it was taken (epoch {state.epoch} at version {version}, "
                f"taken at epoch {taken[0]} version {taken[1]})",
            )
        producers = ProducerTable(state.producers)
        txns = TxnState(state.txn_ongoing, state.txn_aborted, state.txn_coordinators)
        ledgers: list[LedgerRef] = []
        for ref in state.ledgers:
            if ref.closed:
                ledgers.append(ref)
                continue
            try:
                ledgers.append(await self._recover_ledger(ref, producers, txns))
            except LedgerError as e:
                raise LogError(unavailable_code(e), f"cannot recover ledger {ref.ledger_id}: {e}") from e
        epoch = state.epoch if taken is not None else state.epoch + 1
        ongoing, aborted, coordinators = txns.snapshot()
        state = replace(
            state, epoch=epoch, ledgers=tuple(ledgers), producers=producers.snapshot(), txn_ongoing=ongoing,
            txn_aborted=aborted, txn_coordinators=coordinators,
        ).with_txns_trimmed()
        state = state.with_epoch_start(epoch, max(state.end_offset, state.log_start_offset))  # OffsetForLeaderEpoch
        try:
            if taken is not None and state == original:
                self._version = version  # taken already wrote this state: nothing recovered, nothing to write
            else:
                self._version = await self._store.put(self._key, state.encode(), expected_version=version)
        except VersionConflict:
            raise LogError(ErrorCode.not_leader_or_follower, "partition taken over while loading") from None
        self._state = state
        self._producers = producers
        self._durable = ProducerTable(producers.snapshot())
        txns.trim(state.txn_floor)
        self._durable_txns = txns
        self._txns = txns.copy(index=False)
        self._aborts_at_roll = 0
        self._guards.clear()
        if original.ledgers:  # taken over (or reopened) with data: clients may be mid-retry of refused batches
            self._settle_until = time.monotonic() + SETTLE_S
        self._next_offset = self._hw = max(state.end_offset, state.log_start_offset)
        self._writer = None
        self._failed = self._broken = None
        self._generation += 1
        self._inflight.clear()
        self._cache.clear()
        self._wake()

    async def _recover_ledger(self, ref: LedgerRef, producers: ProducerTable, txns: TxnState) -> LedgerRef:
        """Fence and close a ledger left open by a dead writer; index it and replay producer and transaction
        state (open transactions, aborted ones) from it."""
        reader = await self._ledgers.open_ledger(ref.ledger_id, recover=True)
        last_entry = reader.info.last_entry_id
        index = LedgerIndex()
        last_offset, max_ts = ref.first_offset - 1, -1
        async for entry in scan_ledger(reader, last_entry):
            head = log_entry.decode_header(entry)
            index.add(head.first_offset, head.last_offset, head.max_timestamp)
            last_offset, max_ts = head.last_offset, max(max_ts, head.max_timestamp)
            batches = log_entry.batches_of(entry)
            heads = iter_headers(batches)
            for batch in heads:
                producers.record(batch, batch.base_offset, batch.last_offset)
            if heads:
                txns.apply(batches, heads, heads[0].base_offset)
        await reader.close()
        self._lookup.indexes[ref.ledger_id] = index
        log.info(
            "recovered ledger %d of %s/%d: %d entries, offsets %d..%d",
            ref.ledger_id, self.topic_id, self.partition, last_entry + 1, ref.first_offset, last_offset,
        )
        return replace(ref, last_offset=last_offset, max_timestamp=max_ts, closed=True)

    # --- append --------------------------------------------------------------------------------
    async def append(
        self, records: bytes, headers: list[BatchHeader], *, guard: object | None = None
    ) -> asyncio.Future[AppendResult]:
        """Assign offsets to validated batches and hand them to the ledger writer.

        Returns once the entry is queued (so callers can keep arrival order); the returned future
        resolves when the entry is durable on an ack quorum of bookies, or fails with LogError.

        ``guard``: a client's write (Produce), from ``verification_guard``. A transactional batch of a producer
        with no transaction open here is then taken only if that guard is still the producer's current one
        (KIP-890 part 1: verified with the coordinator, and no marker written since). Writes the broker makes
        itself (markers, TxnOffsetCommit) pass None.
        """
        if self._deposed:
            raise LogError(ErrorCode.not_leader_or_follower, "this broker no longer owns the partition")
        try:
            self._check_backpressure()
        except LogError:
            self._refused_retriably()
            raise
        result: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        async with self._lock:
            if self._deposed:
                raise LogError(ErrorCode.not_leader_or_follower, "this broker no longer owns the partition")
            try:
                if self._failed is not None:
                    await self._repair_for_append()
                writer = await self._writer_for_append()
            except LogError:
                self._refused_retriably()
                raise
            except MetadataError as e:  # a ledger roll could not record itself (etcd unreachable): retriable
                self._refused_retriably()
                raise LogError(ErrorCode.not_enough_replicas, f"metadata store unavailable: {e}") from None
            try:
                self._check_next_txn(headers)
                duplicate = self._check_producers(headers)
                self._txns.check_markers(records, headers)
            except (ProducerStateError, MarkerFenced) as e:
                raise LogError(e.code, str(e)) from None
            if duplicate is not None:
                self._answer_duplicate(duplicate, result)
                return result
            if guard is not None:
                self._check_guard(headers, guard)
            self._check_index_room(headers)
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
            pending = PendingEntry(base, end - 1, max_ts, entry, headers)
            pending.waiters.append((result, base))
            self._inflight.push(pending)
            self._next_offset = end
            offset = base
            for head in headers:
                self._producers.record(head, offset, offset + head.last_offset_delta)
                offset += head.record_span
                if head.is_transactional and self._guards:
                    self._guards.pop(head.producer_id, None)  # open now (or ended by a marker): guard used up
            self._txns.apply(records, headers, base)
            if self._failed is None:  # else a failure was noticed meanwhile: the repair writes it
                self._write(writer, pending)
        return result

    def _check_next_txn(self, headers: list[BatchHeader]) -> None:
        """KIP-890 part 2: a TV2 producer's transaction ends with an epoch bump, and its next transaction (at the
        new epoch) may reach this partition before the marker of the last one does (the coordinator answers
        EndTxn before writing markers). Such a batch must not join the transaction still open here at the older
        epoch — that marker would commit or abort it with the wrong transaction — so it is refused retriably
        until the marker arrives."""
        for head in headers:
            if not head.is_transactional or head.is_control or head.producer_id not in self._txns.ongoing:
                continue
            epoch = self._producers.epoch_of(head.producer_id)
            if epoch is not None and head.producer_epoch > epoch:
                self._refused_retriably()
                raise LogError(
                    ErrorCode.not_enough_replicas,
                    f"producer {head.producer_id} epoch {head.producer_epoch}: its transaction at epoch {epoch} is "
                    "still open here (its marker has not arrived yet); retry",
                )

    def _check_guard(self, headers: list[BatchHeader], guard: object) -> None:
        """KIP-890 part 1: refuse a client's transactional batch that would open a transaction here unless the
        coordinator verified this partition is in the producer's transaction and no marker ended it since."""
        for head in headers:
            if not head.is_transactional or head.is_control or head.producer_id in self._txns.ongoing:
                continue
            if guard is OPEN_TXN or self._guards.get(head.producer_id) is not guard:
                raise LogError(
                    ErrorCode.invalid_txn_state,
                    f"producer {head.producer_id}: the partition is not part of an ongoing transaction (ended "
                    "since it was verified, or never added)",
                )

    def _check_index_room(self, headers: list[BatchHeader]) -> None:
        """Refuse (retriably) a batch that opens a transaction while the partition indexes MAX_INDEXED_ABORTS
        aborted transactions itself: its state (in etcd) must stay small; offload moves them into segments."""
        if len(self._durable_txns.aborted) < MAX_INDEXED_ABORTS:
            return
        for head in headers:
            if head.is_transactional and not head.is_control and head.producer_id not in self._txns.ongoing:
                self._refused_retriably()
                raise LogError(
                    ErrorCode.not_enough_replicas,
                    f"{len(self._durable_txns.aborted)} aborted transactions wait for offload to their segments; "
                    "retry",
                )

    # --- transactions --------------------------------------------------------------------------
    def verification_guard(self, producer_id: int) -> object:
        """KIP-890 part 1, before a client's transactional write: ``OPEN_TXN`` when ``producer_id`` has a
        transaction open on this partition (no verification needed); else a fresh guard to pass to ``append``
        once the coordinator has confirmed the partition is in the transaction — a marker written meanwhile
        voids it, so a write verified against a transaction that then ended cannot start a hanging one."""
        if producer_id in self._txns.ongoing:
            return OPEN_TXN
        guard = object()
        self._guards.pop(producer_id, None)
        if len(self._guards) >= MAX_GUARDS:
            self._guards.pop(next(iter(self._guards)))
        self._guards[producer_id] = guard
        return guard

    def forget_guard(self, producer_id: int, guard: object) -> None:
        """A verification that failed: its guard will not be used."""
        if self._guards.get(producer_id) is guard:
            del self._guards[producer_id]

    @property
    def last_stable_offset(self) -> int:
        """The LSO: the first offset of the oldest transaction open here (as of durable data), or the high
        watermark when none is; read_committed consumers read below it. Never below the log start offset (as
        Kafka: records deleted below it cannot hold a consumer back)."""
        first = self._durable_txns.first_unstable()
        return self._hw if first is None else max(min(first, self._hw), self._state.log_start_offset)

    def ongoing_transactions(self) -> dict[int, int]:
        """producer_id -> first offset of its transaction open on this partition (as of appended data)."""
        return dict(self._txns.ongoing)

    @property
    def indexed_aborted(self) -> int:
        """How many aborted transactions the log indexes itself (those of data in ledgers; segments index the
        rest): what bounds the index's memory."""
        return len(self._durable_txns.aborted)

    def coordinator_epoch(self, producer_id: int) -> int:
        """The coordinator epoch of the last marker written for ``producer_id`` here (-1: none)."""
        return self._txns.coordinator_epochs.get(producer_id, -1)

    async def aborted_transactions(self, start: int, end: int) -> list[tuple[int, int]]:
        """(producer_id, first_offset) of every aborted transaction overlapping [start, end), by first offset:
        from the index of data in ledgers and from the segments' indexes for offloaded data."""
        found = set(self._durable_txns.aborted_between(start, end))
        found.update(await self._segment_aborted(start, end))
        return sorted(found, key=lambda t: (t[1], t[0]))

    async def write_marker(
        self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int
    ) -> asyncio.Future[AppendResult]:
        """Append one COMMIT or ABORT control batch for ``producer_id``'s transaction; the future resolves when
        it is durable. A producer epoch older than this partition knows for the producer: INVALID_PRODUCER_EPOCH;
        a coordinator epoch older than the last marker's for the producer: TRANSACTION_COORDINATOR_FENCED.
        Written whether or not a transaction is open here (the coordinator retries markers), as Kafka does."""
        batch = build_marker(producer_id, producer_epoch, commit, coordinator_epoch, int(time.time() * 1000))
        self._guards.pop(producer_id, None)
        return await self.append(batch, iter_headers(batch))

    def _txns_moved(self, floor: int) -> None:
        """The state no longer indexes aborted transactions below ``floor`` (offloaded: segments have them)."""
        self._durable_txns.trim(floor)

    def _refused_retriably(self) -> None:
        """An append was refused before its batches were recorded: the producer's next requests, already on
        the way, would find a sequence gap; for SETTLE_S they are refused retriably too (ProducerTable.check),
        so the client retries them in order after the refused one instead of bumping its epoch."""
        self._settle_until = max(self._settle_until, time.monotonic() + SETTLE_S)

    def _check_producers(self, headers: list[BatchHeader]) -> int | None:
        duplicate: int | None = None
        settling = time.monotonic() < self._settle_until
        for head in headers:
            found = self._producers.check(head, settling=settling)
            if found is not None and duplicate is None:
                duplicate = found
        return duplicate

    def _answer_duplicate(self, offset: int, result: asyncio.Future[AppendResult]) -> None:
        """A retried idempotent batch: answer with its original offset once that is durable."""
        pending = self._inflight.holding(offset) if offset >= self._hw else None
        if pending is None:
            result.set_result(AppendResult(offset, self._state.log_start_offset))
        else:
            pending.waiters.append((result, offset))

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
            self._sync_held()
            for ledger_id in dropped:
                self._lookup.indexes.pop(ledger_id, None)
                await self._lookup.readers.drop(ledger_id)
            self._wake()
            return dropped

    async def roll_if_aged(self) -> bool:
        """Close the open ledger if it is older than ``rollover_ms`` (the next append opens a new one)."""
        writer = self._writer
        if writer is None or (time.monotonic() - self._writer_opened) * 1000 < self._config.rollover_ms:
            return False
        async with self._lock:
            if self._writer is not writer or self._failed is not None or self._deposed:
                return False
            await self._close_writer()
            return self._writer is None

    async def close(self) -> None:
        """Close the open ledger cleanly (on shutdown or when handing the partition over)."""
        async with self._lock:
            if self._failed is None and not self._deposed:
                with contextlib.suppress(LogError):
                    await self._close_writer()
            await self._lookup.readers.close()
            self._depose("the partition was closed on this broker")
            self._cache.clear()  # its bytes leave the broker-wide tail budget
            await self._drop_spare()
        await self._detach_tiers()
        task = self._repair_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def depose(self, reason: str) -> None:
        """Stop serving at once, without I/O (the broker lost its session): every waiting append fails with
        NOT_LEADER_OR_FOLLOWER, late ledger confirmations are ignored, no append is taken any more."""
        self._depose(reason)

    # --- reads ---------------------------------------------------------------------------------
    def add_waiter(self, fut: asyncio.Future[None]) -> None:
        """Resolve ``fut`` at the next high-watermark move."""
        self._waiters.add(fut)

    def discard_waiter(self, fut: asyncio.Future[None]) -> None:
        self._waiters.discard(fut)

    async def read(
        self, offset: int, max_bytes: int, min_one: bool = True, *, committed: bool = False
    ) -> ReadResult:
        """Whole batches from the one holding ``offset`` on, at most ``max_bytes`` of them; with ``min_one``
        the first batch even if it alone is larger (Kafka's rule for the first partition a fetch returns).
        ``committed`` (read_committed): only batches below the last stable offset."""
        hw, start = self._hw, self._state.log_start_offset
        if offset < start or offset > hw:
            raise LogError(ErrorCode.offset_out_of_range, f"offset {offset} outside {start}..{hw}")
        limit = self.last_stable_offset if committed else hw
        if offset >= limit:
            return ReadResult([], hw, start)
        want = max(max_bytes, 1)  # the stores return at least one entry; take_batches trims to the limit
        chunks = self._cache.read(offset, want, hw)
        if chunks is None:
            chunks = await self._read_tiers(offset, want, hw)
        batches = take_batches(chunks, offset, max_bytes, min_one)
        return ReadResult(_below(batches, limit) if limit < hw else batches, hw, start)

    async def entries_from(self, offset: int) -> tuple[int, list[bytes]] | None:
        """The entry holding ``offset`` and the rest of its ledger's entries (for timestamp scans)."""
        return await self._lookup.entries_from(self._state.ledgers, offset)

    async def find_by_timestamp(self, timestamp: int) -> memoryview | None:
        """The entry batches holding the first record with a timestamp >= ``timestamp``, if any."""
        return await self._find_timestamp_tiers(timestamp, self._hw)

    async def max_timestamp_entry(self) -> memoryview | None:
        """The entry batches holding the record with the largest timestamp (the first such)."""
        return await self._max_timestamp_tiers(self._hw)


def _below(batches: list[memoryview], limit: int) -> list[memoryview]:
    """The batches starting below ``limit`` (the LSO: a transaction's first batch, so never inside one)."""
    out: list[memoryview] = []
    for chunk in batches:
        for head in iter_headers(chunk):
            if head.base_offset >= limit:
                if head.position:
                    out.append(chunk[: head.position])
                return out
        out.append(chunk)
    return out
