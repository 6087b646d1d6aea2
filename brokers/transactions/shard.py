"""One ``__transaction_state`` partition's transactional ids: replay, durable writes, snapshots.

A state change is written as one record through the partition log and applied to ``txns`` only once durable
(replay runs the same ``_apply``), so what a client was told always survives a crash or a move: the next
owner replays the partition and finds it. ``coordinator_epoch`` is the partition's leader epoch at load: the
markers this shard writes carry it, so a partition can tell a stale coordinator's markers apart.
Replay cost is bounded as for the offsets topic: after ``snapshot_records`` writes the shard writes every live
record at the log end and moves the log start offset there (a crash in between only makes replay read more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.codec.batch import BatchError, iter_headers
from brokers.codec.builder import build_batch, build_batches, iter_records
from brokers.log.partition import AppendResult, LogError, PartitionLog
from brokers.transactions import records as rec
from brokers.transactions.state import TxnMetadata, TxnState
from metadata.api import MetadataError

log = logging.getLogger(__name__)
READ_CHUNK = 1024 * 1024
SNAPSHOT_RECORDS = 10_000
SNAPSHOT_BATCH_BYTES = 1024 * 1024


class TxnError(Exception):
    """A transactional request cannot be served here now (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, ...)."""

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(message or code.name)
        self.code = code


def now_ms() -> int:
    return int(time.time() * 1000)


def _write_error(e: BaseException) -> TxnError:
    """Kafka's mapping of a transaction-log append failure (NOT_COORDINATOR when the partition moved)."""
    if isinstance(e, LogError) and e.code == ErrorCode.not_leader_or_follower:
        return TxnError(ErrorCode.not_coordinator, f"transaction state partition moved: {e}")
    return TxnError(ErrorCode.coordinator_not_available, f"transaction state write failed: {e}")


class TxnShard:
    """The transactional ids of one ``__transaction_state`` partition owned by this broker."""

    def __init__(self, partition: int, plog: PartitionLog, snapshot_records: int = SNAPSHOT_RECORDS) -> None:
        self.partition = partition
        self.plog = plog
        self.coordinator_epoch = plog.epoch
        self.txns: dict[str, TxnMetadata] = {}
        """Durable state by transactional id (all of it persisted, previous producer id/epoch included)."""
        self.pending: set[str] = set()
        """Transactional ids with a state change being written: other requests get CONCURRENT_TRANSACTIONS."""
        self.active = False
        self.snapshots = 0
        self._snapshot_records = snapshot_records
        self._since_snapshot = 0
        self._append_lock = asyncio.Lock()
        self._last_applied: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- replay --------------------------------------------------------------------------------
    async def load(self) -> int:
        """Rebuild ``txns`` by replaying from the log start offset to the high watermark; returns records read."""
        started = time.monotonic()
        offset = self.plog.log_start_offset
        end = self.plog.high_watermark
        count = 0
        while offset < end:
            result = await self.plog.read(offset, READ_CHUNK)
            if not result.batches:
                break
            for chunk in result.batches:
                try:
                    headers = iter_headers(chunk)
                except BatchError as e:
                    log.error("transaction state %d: unreadable entry at %d skipped: %s", self.partition, offset, e)
                    offset += 1
                    continue
                for head in headers:
                    if head.last_offset < offset or head.is_control:
                        offset = max(offset, head.last_offset + 1)
                        continue
                    try:
                        for kv in iter_records(chunk, head):
                            if kv.offset >= offset:
                                self._apply(kv.key, kv.value, kv.offset)
                                count += 1
                    except BatchError as e:
                        log.error("transaction state %d: corrupt batch at %d skipped: %s", self.partition, offset, e)
                    offset = head.last_offset + 1
        self._since_snapshot = max(0, count - len(self.txns))
        self.active = True
        log.log(
            logging.INFO if count else logging.DEBUG,
            "transaction state partition %d loaded (coordinator epoch %d): %d records, %d transactional ids in "
            "%.3fs", self.partition, self.coordinator_epoch, count, len(self.txns), time.monotonic() - started,
        )
        return count

    def _apply(self, key: bytes | None, value: bytes | None, log_offset: int) -> None:
        if key is None:
            return
        try:
            txn_id = rec.decode_key(key)
            if value is None:
                self.txns.pop(txn_id, None)
                return
            v = rec.decode_value(value)
        except rec.RecordFormatError as e:
            log.error("transaction state %d: record at %d skipped: %s", self.partition, log_offset, e)
            return
        if v.state == TxnState.DEAD:
            self.txns.pop(txn_id, None)
            return
        if v.tagged:  # version 1: the previous producer id/epoch were written with the state
            last_pid, last_epoch = v.previous_producer_id, v.previous_producer_epoch
        else:  # version 0 (written before they were persisted): whatever this replay last knew
            old = self.txns.get(txn_id)
            last_pid, last_epoch = (old.last_producer_id, old.last_producer_epoch) if old is not None else (-1, -1)
        self.txns[txn_id] = TxnMetadata(
            txn_id, v.producer_id, v.producer_epoch, v.timeout_ms, v.state, v.partitions, v.start_ms, v.update_ms,
            last_pid, last_epoch, v.next_producer_id, v.client_version,
        )

    # --- writes --------------------------------------------------------------------------------
    async def write(self, meta: TxnMetadata | None, transactional_id: str) -> None:
        """Make ``meta`` durable (None: a tombstone) and apply it; raises TxnError (then nothing is applied)."""
        if not self.active:
            raise TxnError(ErrorCode.not_coordinator, f"transaction state partition {self.partition} is not here")
        key = rec.encode_key(transactional_id)
        value = None if meta is None else rec.encode_value(rec.TxnValue.of(meta))
        async with self._append_lock:
            batch = build_batch([(key, value)], now_ms())
            try:
                durable = await self.plog.append(batch, iter_headers(batch))
            except LogError as e:
                raise _write_error(e) from None
            applied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            durable.add_done_callback(lambda f: self._on_durable(f, transactional_id, meta, applied))
            self._last_applied = applied
        await asyncio.shield(applied)
        self._since_snapshot += 1
        self._maybe_snapshot()

    def _on_durable(
        self, durable: asyncio.Future[AppendResult], transactional_id: str, meta: TxnMetadata | None,
        applied: asyncio.Future[None],
    ) -> None:
        """Apply a write once durable, whether or not its requester still waits (it may have been cancelled)."""
        error = durable.exception() if not durable.cancelled() else asyncio.CancelledError()
        if error is not None:
            applied.set_exception(_write_error(error))
            applied.exception()  # nobody may be waiting any more
            return
        if meta is None:
            self.txns.pop(transactional_id, None)
        else:
            self.txns[transactional_id] = meta
        applied.set_result(None)

    # --- snapshots -----------------------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        if self.active and self._since_snapshot > self._snapshot_records:
            self._since_snapshot = 0
            self.spawn(self.snapshot())

    async def snapshot(self) -> None:
        """Write every live record at the log end, then drop everything before it."""
        async with self._append_lock:
            if self._last_applied is not None:
                await asyncio.wait([self._last_applied])
            records: list[tuple[bytes | None, bytes | None]] = [
                (rec.encode_key(t), rec.encode_value(rec.TxnValue.of(m))) for t, m in self.txns.items()
            ]
            start = self.plog.high_watermark
            batches = build_batches(records, now_ms(), SNAPSHOT_BATCH_BYTES) if records else []
            try:
                durable = [await self.plog.append(batch, iter_headers(batch)) for batch in batches]
            except LogError as e:
                log.warning("transaction state %d: snapshot failed: %r", self.partition, e)
                return
        try:
            if durable:
                start = (await asyncio.gather(*durable))[0].base_offset
            await self.plog.advance_start(start)
        except (LogError, MetadataError) as e:
            log.warning("transaction state %d: snapshot failed: %r", self.partition, e)
            return
        self.snapshots += 1
        log.info("transaction state %d: snapshot of %d records at offset %d", self.partition, len(records), start)

    # --- housekeeping --------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` for as long as the shard lives (cancelled when the partition goes; a shard already closed
        runs nothing: the next owner does the work from its replay)."""
        task = asyncio.ensure_future(coro)
        if not self.active:
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (error := task.exception()) is None:
            return
        if isinstance(error, MetadataError | LogError | TxnError):
            log.warning("transaction state %d: background task failed: %r", self.partition, error)
        else:
            log.error("transaction state %d: background task failed", self.partition, exc_info=error)

    async def close(self) -> None:
        """Stop serving: marker and timeout work is cancelled; the next owner resumes it from the log."""
        self.active = False
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
