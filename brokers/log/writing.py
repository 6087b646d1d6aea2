"""The write side of a partition log: entries to the tail ledger, confirmations, rollover, and replacing a
ledger that lost its write quorum (design §5 step 5).

Entries are written in offset order and confirmed in that order; each stays in ``InflightEntries`` with
its bytes until it is confirmed. When the writer fails an entry for want of Qa healthy bookies, the
ledger is closed by recovery (fencing; the entries recovery finds are durable there and are confirmed as
they are), the next ledger is opened on live bookies (``ensemble.py``) and every remaining in-flight
entry is written to it again — same offsets, same bytes, in order — so their produce requests complete
there. If that is impossible for now (fewer than Qa bookies alive) the waiting requests get
NOT_ENOUGH_REPLICAS (retriable; none of them was acknowledged), the entries stay queued, and the next
append retries after a short backoff. A fenced write means another broker took the partition over:
NOT_LEADER_OR_FOLLOWER, never a retry. When the bookies failed for want of disk (full or failing: a
DiskError), the answer is KAFKA_STORAGE_ERROR instead of NOT_ENOUGH_REPLICAS, as Kafka answers for a log
directory that is offline; the partition carries on by itself once the bookies take writes again.

``LedgerWriting`` is a mixin of ``PartitionLog`` (partition.py), which owns the attributes declared here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from kio.schema.errors import ErrorCode

from brokers.log.cache import TailCache
from brokers.log.ensemble import create_on_live_bookies
from brokers.log.index import LedgerIndex
from brokers.log.inflight import InflightEntries, PendingEntry
from brokers.log.lookup import LedgerLookup
from brokers.log.producers import ProducerTable
from brokers.log.txn_state import ABORTS_PER_LEDGER, TxnState
from brokers.log.types import LogConfig, LogError
from brokers.observability import rollover
from metadata.api import MetadataError, MetadataStore, VersionConflict
from metadata.models import LedgerRef, PartitionState
from storage import log_entry
from storage.ledger.api import DiskError, LedgerClient, LedgerError, LedgerFenced, LedgerWriter

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.1
RETRY_MAX_S = 1.0
UPGRADE_CHECK_S = 1.0  # how often a ledger on a smaller ensemble checks for enough live bookies
SPARE_AT = 0.75
"""Once the open ledger holds this fraction of ``rollover_bytes`` (or is this fraction of ``rollover_ms``
old), the next ledger is created in the background, so a rollover only closes one ledger and records the
switch: appends wait for that under the partition lock, not for a ledger creation too."""


def unavailable_code(error: BaseException | None) -> ErrorCode:
    """The retriable error for a write the bookies could not take: KAFKA_STORAGE_ERROR when their disks are
    full or failing (it clears once they have room), else NOT_ENOUGH_REPLICAS."""
    return ErrorCode.kafka_storage_error if isinstance(error, DiskError) else ErrorCode.not_enough_replicas


class LedgerWriting:
    """Writing, confirming and replacing the tail ledger of one partition log."""

    topic_id: str
    partition: int
    _store: MetadataStore
    _key: str
    _version: int
    _state: PartitionState
    _ledgers: LedgerClient
    _config: LogConfig
    _lock: asyncio.Lock
    _writer: LedgerWriter | None
    _writer_opened: float
    _sent: int  # entries written to the current writer (its next entry id)
    _generation: int  # bumped when a writer is retired: its late outcomes are ignored
    _inflight: InflightEntries
    _failed: BaseException | None  # why the current ledger must be replaced
    _broken: int | None  # a failed ledger not yet closed by recovery
    _retry_at: float
    _backoff: float
    _repair_task: asyncio.Task[None] | None
    _degraded: bool  # the current ledger has a smaller ensemble than configured
    _upgrade_at: float
    _next_offset: int
    _hw: int
    _cache: TailCache
    _lookup: LedgerLookup
    _durable: ProducerTable  # confirmed batches only (what snapshots record)
    _durable_txns: TxnState  # transactions as of the confirmed batches (LSO, aborted index, snapshots)
    _txns: TxnState  # transactions as of every appended batch
    _aborts_at_roll: int  # ``_txns.aborts`` when the current ledger started
    _waiters: set[asyncio.Future[None]]
    _deposed: bool
    _spare: tuple[LedgerWriter, bool] | None  # the next ledger, created ahead of rollover (and whether full)
    _spare_task: asyncio.Task[None] | None
    ledger_switches: int

    if TYPE_CHECKING:

        def _ledger_closed(self, ledger_id: int, length: int) -> None: ...  # tiered.py: offload it

        def _entry_durable(self, pending: PendingEntry) -> None: ...  # tiered.py: keep its bytes for offload

    def _snapshot(self, state: PartitionState) -> PartitionState:
        """``state`` with the durable producer and transaction state as of now: written whenever a ledger is
        closed or opened, so a load replays only the ledgers after it (idempotence and transactions alike)."""
        ongoing, aborted, coordinators = self._durable_txns.snapshot()
        return replace(
            state, producers=self._durable.snapshot(), txn_ongoing=ongoing, txn_aborted=aborted,
            txn_coordinators=coordinators,
        )  # fmt: skip

    async def _commit_state(self, state: PartitionState) -> None:
        state = state.with_txns_trimmed()
        try:
            self._version = await self._store.put(self._key, state.encode(), expected_version=self._version)
        except VersionConflict:
            self._depose("partition state changed under us")
            raise LogError(ErrorCode.not_leader_or_follower, "partition state changed under us") from None
        self._state = state
        self._durable_txns.trim(state.txn_floor)

    def _depose(self, reason: str) -> None:
        """This broker no longer owns the partition: fail every waiting append, take no more."""
        self._deposed = True
        self._generation += 1
        for pending in self._inflight:
            pending.fail(lambda: LogError(ErrorCode.not_leader_or_follower, reason))
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _write(self, writer: LedgerWriter, pending: PendingEntry) -> None:
        """Hand one entry to the writer; its outcome arrives in ``_on_written``."""
        try:
            future = writer.append(memoryview(pending.entry))
        except LedgerFenced:
            self._depose("ledger fenced: ownership lost")
            return
        except LedgerError as e:
            self._on_write_failed(e)
            return
        if future.done() and not future.cancelled() and future.exception() is not None:
            error = future.exception()  # refused at once (the writer already failed): it got no entry id
            if isinstance(error, LedgerFenced):
                self._depose("ledger fenced: ownership lost")
            else:
                self._on_write_failed(error or LedgerError("refused"))
            return
        pending.ledger_id, pending.entry_id = writer.ledger_id, self._sent
        self._sent += 1
        self._lookup.indexes[writer.ledger_id].add(pending.first, pending.last, pending.max_timestamp)
        generation = self._generation
        future.add_done_callback(lambda f: self._on_written(f, pending, generation))

    def _on_written(self, future: asyncio.Future[int], pending: PendingEntry, generation: int) -> None:
        error = asyncio.CancelledError() if future.cancelled() else future.exception()
        if generation != self._generation:
            return  # a retired writer: recovery decided this entry's fate
        if error is None:
            if self._inflight.front() is pending:
                self._confirm(pending)
        elif isinstance(error, LedgerFenced):
            self._depose("ledger fenced: ownership lost")
        else:
            self._on_write_failed(error)

    def _confirm(self, pending: PendingEntry) -> None:
        """The front entry is durable: move the high watermark over it and answer its waiters."""
        self._inflight.pop_front()
        offset = pending.first
        for head in pending.headers:
            self._durable.record(head, offset, offset + head.last_offset_delta)
            offset += head.record_span
        self._durable_txns.apply(log_entry.batches_of(pending.entry), pending.headers, pending.first)
        self._cache.add(pending.first, pending.last, log_entry.batches_of(pending.entry))
        self._entry_durable(pending)
        self._hw = pending.last + 1
        pending.answer(self._state.log_start_offset)
        self._wake()

    # --- ledger failures -----------------------------------------------------------------------
    def _on_write_failed(self, error: BaseException) -> None:
        if self._deposed:
            return
        if self._failed is None:
            self._failed = error
            writer = self._writer
            log.warning(
                "%s/%d: ledger %s lost its write quorum (%r); switching to a new ledger",
                self.topic_id, self.partition, writer.ledger_id if writer else "-", error,
            )
        task = self._repair_task
        if task is None or task.done():
            self._repair_task = asyncio.get_running_loop().create_task(self._repair_in_background())

    async def _repair_in_background(self) -> None:
        """Replace the failed ledger now, so in-flight produce requests complete without a new append."""
        while self._failed is not None and not self._deposed:
            await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
            async with self._lock:
                if self._failed is None or self._deposed:
                    return
                try:
                    repaired = await self._try_repair()
                except LogError:
                    return  # deposed while committing: the waiters were answered
            if not repaired:
                return  # appends retry after the backoff

    async def _repair_for_append(self) -> None:
        if time.monotonic() < self._retry_at:
            raise LogError(
                unavailable_code(self._failed), f"write-ahead tier unavailable ({self._failed!r}); retrying shortly"
            )
        if not await self._try_repair():
            raise LogError(unavailable_code(self._failed), f"write-ahead tier unavailable: {self._failed!r}")

    async def _try_repair(self) -> bool:
        """Under the lock: close the failed ledger by recovery, open the next one on live bookies and write
        every in-flight entry to it again. False if that is impossible for now: the waiting requests are
        then answered NOT_ENOUGH_REPLICAS, the entries stay queued, and the next attempt waits a backoff."""
        self._generation += 1
        writer, self._writer = self._writer, None
        if writer is not None:
            self._broken = writer.ledger_id
        try:
            if self._broken is not None:
                await self._close_by_recovery(self._broken)
                self._broken = None
            new, full = await create_on_live_bookies(
                self._ledgers, self._config.ensemble_size, self._config.write_quorum, self._config.ack_quorum
            )
            await self._start_ledger(new, full)
        except LogError:
            raise
        except Exception as e:
            if not isinstance(e, LedgerError | MetadataError):
                log.exception("%s/%d: ledger switch failed", self.topic_id, self.partition)
            self._give_up_for_now(e)
            return False
        self._failed = None
        self._backoff = RETRY_MIN_S
        self._retry_at = time.monotonic() + RETRY_MIN_S  # should this ledger fail at once, do not spin
        self.ledger_switches += 1
        log.info(
            "%s/%d: continuing in ledger %d; re-writing %d in-flight entries",
            self.topic_id, self.partition, new.ledger_id, len(self._inflight),
        )
        for pending in list(self._inflight):
            if self._failed is not None or self._deposed:
                break  # the new ledger failed too: the next repair writes the rest
            self._write(new, pending)
        return True

    def _give_up_for_now(self, error: BaseException) -> None:
        if self._failed is None or isinstance(error, DiskError):
            self._failed = error  # the latest cause decides the error code the waiting requests get
        first = self._backoff == RETRY_MIN_S  # the first failure since the last success: worth a warning
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX_S)
        message = f"write-ahead tier unavailable: {error}"
        code = unavailable_code(error)
        for pending in self._inflight:
            pending.fail(lambda: LogError(code, message))
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "%s/%d: cannot switch ledgers (%r); %d entries wait, retrying on appends",
            self.topic_id, self.partition, error, len(self._inflight),
        )

    async def _close_by_recovery(self, ledger_id: int) -> None:
        """Fence and recover a failed ledger; confirm the in-flight entries it holds; record it closed."""
        ref = self._state.ledgers[-1]
        if ref.ledger_id != ledger_id:
            raise LedgerError(f"ledger {ledger_id} is not the tail of {self.topic_id}/{self.partition}")
        reader = await self._ledgers.open_ledger(ledger_id, recover=True)
        try:
            last_entry, length = reader.info.last_entry_id, reader.info.length
            if last_entry < 0:
                durable_last = ref.first_offset - 1
            else:
                durable_last = log_entry.decode_header((await reader.read(last_entry, last_entry))[0]).last_offset
        finally:
            await reader.close()
        await self._lookup.readers.drop(ledger_id)  # a cached reader still thinks the ledger is open
        if durable_last < self._hw - 1:
            log.error(
                "%s/%d: ledger %d recovered to offset %d below the high watermark %d",
                self.topic_id, self.partition, ledger_id, durable_last, self._hw,
            )
        while (front := self._inflight.front()) is not None and front.last <= durable_last:
            self._confirm(front)  # durable in the old ledger: confirmed as it is
        if front is not None and front.first != durable_last + 1:
            log.error(
                "%s/%d: ledger %d recovered to offset %d but the next in-flight entry starts at %d",
                self.topic_id, self.partition, ledger_id, durable_last, front.first,
            )
        index = self._lookup.indexes.get(ledger_id)
        if index is not None:
            if len(index) > last_entry + 1:
                index.truncate(last_entry + 1)
                index.last_offset = durable_last
            if len(index) != last_entry + 1:
                self._lookup.indexes.pop(ledger_id)
        index = await self._lookup.index_of(ref)
        ledgers = list(self._state.ledgers)
        ledgers[-1] = replace(ref, last_offset=durable_last, max_timestamp=index.max_timestamp, closed=True)
        await self._commit_state(self._snapshot(replace(self._state, ledgers=tuple(ledgers))))
        self._ledger_closed(ledger_id, length)
        log.info(
            "%s/%d: closed ledger %d by recovery at entry %d (offset %d)",
            self.topic_id, self.partition, ledger_id, last_entry, durable_last,
        )

    # --- ledgers -------------------------------------------------------------------------------
    async def _writer_for_append(self) -> LedgerWriter:
        writer = self._writer
        if writer is None:
            await self._roll()
        else:
            now = time.monotonic()
            config = self._config
            if (
                writer.length >= config.rollover_bytes
                or (now - self._writer_opened) * 1000 >= config.rollover_ms
                or self._txns.aborts - self._aborts_at_roll >= ABORTS_PER_LEDGER  # their index moves on offload
            ):
                await self._roll()
            elif (
                writer.length >= SPARE_AT * config.rollover_bytes
                or (now - self._writer_opened) * 1000 >= SPARE_AT * config.rollover_ms
            ):
                self._prepare_spare()
            elif self._degraded and now >= self._upgrade_at:
                self._upgrade_at = now + UPGRADE_CHECK_S
                full = await self._full_ledger_if_possible()
                if full is not None:
                    log.info("%s/%d: enough bookies again; rolling over to ledger %d",
                             self.topic_id, self.partition, full.ledger_id)
                    await self._roll(full)
        if self._writer is None:
            raise LogError(ErrorCode.not_enough_replicas, "no ledger to write to")
        return self._writer

    async def _full_ledger_if_possible(self) -> LedgerWriter | None:
        """A ledger on the configured ensemble, if enough bookies are live now (a degraded ledger is
        replaced by one as soon as they are, so the configured replication is back)."""
        config = self._config
        try:
            return await self._ledgers.create_ledger(config.ensemble_size, config.write_quorum, config.ack_quorum)
        except LedgerError:
            return None

    async def _roll(self, prepared: LedgerWriter | None = None) -> None:
        """Close the current ledger (if any) and start a new one (``prepared``, or one created now on the
        live bookies), recording both by compare-and-swap."""
        started = time.perf_counter()
        spare, self._spare = (self._spare, None) if prepared is None else (None, self._spare)
        try:
            await self._close_writer(spare)
        except BaseException:
            if prepared is not None:  # not to be used now: close it rather than leave an open ledger behind
                with contextlib.suppress(Exception):
                    await prepared.close()
            self._keep_spare(spare)
            raise
        if spare is not None and self._writer is spare[0]:  # closed and switched in one metadata write
            rollover.observe(time.perf_counter() - started, True)
            return
        self._keep_spare(spare)
        if self._failed is not None:  # an entry failed while the ledger closed: replace it as after any failure
            if prepared is not None:
                with contextlib.suppress(LedgerError):
                    await prepared.close()
            if not await self._try_repair():
                raise LogError(unavailable_code(self._failed), f"write-ahead tier unavailable: {self._failed!r}")
            return
        if prepared is not None:
            await self._start_ledger(prepared, True)
            return
        spare, self._spare = self._spare, None
        if spare is not None:  # there was no open ledger to close (the first append, or after an age roll)
            try:
                await self._start_ledger(*spare)
            except BaseException:
                self._keep_spare(spare)
                raise
            return
        config = self._config
        try:
            writer, full = await create_on_live_bookies(
                self._ledgers, config.ensemble_size, config.write_quorum, config.ack_quorum
            )
        except LedgerError as e:
            self._give_up_for_now(e)
            raise LogError(unavailable_code(e), f"cannot open a ledger: {e}") from e
        await self._start_ledger(writer, full)
        if self._hw > 0:  # not the first ledger of the log
            rollover.observe(time.perf_counter() - started, False)

    def _keep_spare(self, spare: tuple[LedgerWriter, bool] | None) -> None:
        """A spare the rollover did not start stays for the next one (or is dropped if one came meanwhile)."""
        if spare is None:
            return
        if self._spare is None and not self._deposed:
            self._spare = spare
        else:
            asyncio.get_running_loop().create_task(self._discard(spare[0]))

    def _prepare_spare(self) -> None:
        """Create the next ledger in the background, unless one is there or on its way."""
        if self._spare is None and (self._spare_task is None or self._spare_task.done()) and not self._deposed:
            self._spare_task = asyncio.get_running_loop().create_task(self._create_spare())

    async def _create_spare(self) -> None:
        config = self._config
        try:
            spare = await create_on_live_bookies(
                self._ledgers, config.ensemble_size, config.write_quorum, config.ack_quorum
            )
        except Exception as e:  # the rollover creates one itself (and reports what fails then)
            log.debug("%s/%d: no spare ledger for now: %r", self.topic_id, self.partition, e)
            return
        if self._spare is not None or self._deposed:
            await self._discard(spare[0])
            return
        self._spare = spare

    async def _drop_spare(self) -> None:
        """Close and delete the spare ledger, if any (the partition is closing here)."""
        task = self._spare_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        spare, self._spare = self._spare, None
        if spare is not None:
            await self._discard(spare[0])

    async def _discard(self, writer: LedgerWriter) -> None:
        """An unused (empty) ledger: closed and deleted; best effort."""
        try:
            await writer.close()
            await self._ledgers.delete_ledger(writer.ledger_id)
        except Exception as e:
            log.info("%s/%d: could not delete unused ledger %d: %r", self.topic_id, self.partition,
                     writer.ledger_id, e)  # fmt: skip

    def _next_ref(self, writer: LedgerWriter) -> LedgerRef:
        """The log's next ledger; in-flight entries (if any) start it."""
        front = self._inflight.front()
        return LedgerRef(writer.ledger_id, front.first if front is not None else self._next_offset)

    async def _start_ledger(self, writer: LedgerWriter, full: bool) -> None:
        """Record ``writer``'s ledger as the log's tail."""
        ledgers = (*self._state.ledgers, self._next_ref(writer))
        await self._commit_state(self._snapshot(replace(self._state, ledgers=ledgers)))
        self._started(writer, full)

    def _started(self, writer: LedgerWriter, full: bool) -> None:
        """``writer``'s ledger is recorded as the tail: write to it from now on."""
        self._lookup.indexes[writer.ledger_id] = LedgerIndex()
        self._writer = writer
        self._writer_opened = time.monotonic()
        self._aborts_at_roll = self._txns.aborts
        self._sent = 0
        self._degraded = not full
        self._upgrade_at = self._writer_opened + UPGRADE_CHECK_S

    async def _close_writer(self, following: tuple[LedgerWriter, bool] | None = None) -> None:
        """Close the current ledger cleanly. If an entry failed meanwhile the writer stays current and
        ``_failed`` is set: the caller replaces the ledger (closing it by recovery). ``following``: a ledger
        created ahead, recorded as the next one in the same metadata write (one write per rollover instead
        of two); it is the writer afterwards, unless there was no current ledger to close."""
        writer = self._writer
        if writer is None:
            return
        try:
            last_entry = await writer.close()
        except LedgerFenced:
            self._depose("ledger fenced: ownership lost")
            raise LogError(ErrorCode.not_leader_or_follower, "ledger fenced: ownership lost") from None
        except LedgerError as e:
            self._on_write_failed(e)
            return
        if self._failed is None and last_entry + 1 < self._sent:
            self._on_write_failed(LedgerError(f"ledger {writer.ledger_id} closed at entry {last_entry}"))
        if self._failed is not None:
            return
        while (front := self._inflight.front()) is not None and front.ledger_id == writer.ledger_id:
            self._confirm(front)  # confirmed (the close waited for them); their callbacks may not have run yet
        ledgers = list(self._state.ledgers)
        index = self._lookup.indexes[writer.ledger_id]
        ledgers[-1] = replace(ledgers[-1], last_offset=self._hw - 1, max_timestamp=index.max_timestamp, closed=True)
        if following is not None:
            ledgers.append(self._next_ref(following[0]))
        # Recorded before the writer is dropped: if the store is unreachable, the next roll closes the same
        # (already closed, so at once) writer and records it again, rather than opening a ledger after one
        # the state still shows open.
        await self._commit_state(self._snapshot(replace(self._state, ledgers=tuple(ledgers))))
        self._writer = None
        self._ledger_closed(writer.ledger_id, writer.length)
        if following is not None:
            self._started(*following)

