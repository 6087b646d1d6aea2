"""One ``__consumer_offsets`` partition's groups and committed offsets: replay, durable writes, snapshots.

Every state change is written as records through the partition log and applied (``_apply``, the same
code replay runs) only once the write is durable, in log order. Replay cost is bounded by snapshots: once
``snapshot_records`` records were appended since the last snapshot, the shard writes its whole live state
(every committed offset and persisted group) at the log end and moves the log start offset to it, so a
later replay reads at most one snapshot plus about ``snapshot_records`` records, however many commits were
ever made. A crash between the snapshot and the start-offset move is harmless: replay then reads the older
records too, and the last write of each key wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kio.schema.errors import ErrorCode

from brokers.codec.batch import TRANSACTIONAL_FLAG, BatchError, BatchHeader, iter_headers
from brokers.codec.builder import build_batch, build_batches, iter_records
from brokers.groups import records as rec
from brokers.groups.base import Group, GroupConfig, GroupError, now_ms
from brokers.groups.classic import ClassicGroup
from brokers.groups.txn_offsets import COMMIT, ControlRecordError, PendingOffset, PendingTxnOffsets, control_type
from brokers.log.partition import AppendResult, LogError, PartitionLog
from metadata.api import MetadataError

log = logging.getLogger(__name__)
READ_CHUNK = 1024 * 1024
MAX_IN_FLIGHT = 2
MAX_WRITES_PER_BATCH = 2000
Records = list[tuple[bytes, bytes | None]]


class ShardExtension(Protocol):
    """Record types another group kind persists in the shard (KIP-848: key versions 3 and up)."""

    def handles(self, key_version: int) -> bool: ...

    def replay(self, key: rec.UnknownKey, value: bytes | None, log_offset: int) -> None:
        """Apply one durable record (during replay and after each of the shard's writes)."""
        ...

    def snapshot_records(self) -> Records:
        """Every live record this extension needs to rebuild its state (for a snapshot)."""
        ...

    def loaded(self) -> None:
        """Replay is over: create the live groups (``shard.groups``) from the replayed state."""
        ...


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    """A committed offset as the shard holds it."""

    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp: int
    expire_timestamp: int = -1
    log_offset: int = -1
    """Where the record that set it sits (ordering against transactional offsets); -1: unknown."""


@dataclass(frozen=True, slots=True)
class LoadStats:
    """What one replay read."""

    records: int
    bytes: int
    start_offset: int
    end_offset: int
    seconds: float


def _answer(applied: asyncio.Future[int], *, items: list[tuple[Records, asyncio.Future[int]]]) -> None:
    """Answer each coalesced write: its own first offset, or the batch's error."""
    error = applied.exception() if not applied.cancelled() else GroupError(ErrorCode.coordinator_not_available)
    base = applied.result() if error is None else 0
    for records, done in items:
        if done.done():
            continue
        if error is not None:
            done.set_exception(error)
            done.exception()
        else:
            done.set_result(base)
        base += len(records)


_PRODUCER_ERRORS = frozenset(
    {ErrorCode.invalid_producer_epoch, ErrorCode.producer_fenced, ErrorCode.invalid_txn_state,
     ErrorCode.invalid_producer_id_mapping, ErrorCode.transactional_id_authorization_failed}
)
"""Append refusals of a transactional batch a TxnOffsetCommit passes on as they are (as Kafka does)."""


def _write_error(e: BaseException) -> GroupError:
    """Kafka's mapping of an offsets-topic append failure to a group error."""
    if isinstance(e, LogError) and e.code == ErrorCode.not_leader_or_follower:
        return GroupError(ErrorCode.not_coordinator, f"offsets partition moved: {e}")
    if isinstance(e, LogError) and e.code in _PRODUCER_ERRORS:
        return GroupError(e.code, str(e))
    return GroupError(ErrorCode.coordinator_not_available, f"offsets partition write failed: {e}")


class GroupShard:
    """The groups and offsets of one ``__consumer_offsets`` partition, owned by this broker."""

    def __init__(
        self,
        partition: int,
        plog: PartitionLog,
        config: GroupConfig,
        delete_ledgers: Callable[[list[int]], None] | None = None,
        extensions: Iterable[Callable[[GroupShard], ShardExtension]] = (),
    ) -> None:
        self.partition = partition
        self.plog = plog
        self.config = config
        self.groups: dict[str, Group] = {}
        """Live groups by id (classic and other kinds)."""
        self.offsets: dict[str, dict[tuple[str, int], CommittedOffset]] = {}
        """Durable committed offsets: group -> (topic, partition) -> offset."""
        self.classic_values: dict[str, rec.GroupValue] = {}
        """Durable classic group metadata (what a snapshot writes)."""
        self.pending_commits: dict[str, set[asyncio.Future[int]]] = {}
        """Offset commits of a group written but not yet durable: OffsetFetch waits for them."""
        self.pending_txn = PendingTxnOffsets()
        """TxnOffsetCommit offsets waiting for their transaction's marker (txn_offsets.py)."""
        self.extensions = [make(self) for make in extensions]
        self.active = False
        self.snapshots = 0
        self.last_load: LoadStats | None = None
        self._delete_ledgers = delete_ledgers
        self._append_lock = asyncio.Lock()
        self._last_applied: asyncio.Future[int] | None = None
        self._queue: list[tuple[Records, asyncio.Future[int]]] = []
        self._in_flight: list[asyncio.Future[int]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._since_snapshot = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- replay --------------------------------------------------------------------------------
    async def load(self) -> LoadStats:
        """Rebuild state by replaying the partition from its log start offset to its high watermark."""
        started = time.monotonic()
        start = offset = self.plog.log_start_offset
        end = self.plog.high_watermark
        count = size = 0
        while offset < end:
            result = await self.plog.read(offset, READ_CHUNK)
            if not result.batches:
                break
            for chunk in result.batches:
                size += len(chunk)
                try:
                    headers = iter_headers(chunk)
                except BatchError as e:
                    log.error("offsets partition %d: unreadable entry at %d skipped: %s", self.partition, offset, e)
                    offset += 1
                    continue
                for head in headers:
                    if head.last_offset < offset:
                        continue
                    try:
                        if head.is_control:
                            self._replay_control(chunk, head)
                            offset = head.last_offset + 1
                            continue
                        txn = (head.producer_id, head.producer_epoch) if head.is_transactional else None
                        for kv in iter_records(chunk, head):
                            if kv.offset >= offset:
                                self._apply(kv.key, kv.value, kv.offset, txn)
                                count += 1
                    except BatchError as e:
                        log.error("offsets partition %d: corrupt batch at %d skipped: %s", self.partition, offset, e)
                    offset = head.last_offset + 1
        self._restore_groups()
        live = self.live_record_count()
        self._since_snapshot = max(0, count - live)
        self.active = True
        stats = LoadStats(count, size, start, offset, time.monotonic() - started)
        self.last_load = stats
        log.log(
            logging.INFO if count else logging.DEBUG,
            "offsets partition %d loaded: %d records (%d bytes, offsets %d..%d) in %.3fs; %d groups",
            self.partition, count, size, start, offset, stats.seconds, len(self.groups),
        )
        self._maybe_snapshot()
        return stats

    def _replay_control(self, chunk: bytes | memoryview, head: BatchHeader) -> None:
        """A transaction marker met in replay: the end of that producer's pending offsets, as live."""
        for kv in iter_records(chunk, head):
            try:
                kind = control_type(kv.key)
            except ControlRecordError as e:
                log.error("offsets partition %d: control record at %d skipped: %s", self.partition, kv.offset, e)
                continue
            self.pending_txn.note_epoch(head.producer_id, head.producer_epoch)
            if kind in (0, 1):
                self.complete_transaction(head.producer_id, kind == COMMIT)

    def _apply(
        self, key: bytes | None, value: bytes | None, log_offset: int, txn: tuple[int, int] | None = None
    ) -> None:
        """Apply one durable record: replay and completed writes both come here, in log order.

        ``txn``: (producer id, epoch) of a transactional batch; its offset records become pending offsets.
        """
        if key is None:
            return
        try:
            parsed = rec.decode_key(key)
            if txn is not None:
                if isinstance(parsed, rec.OffsetKey) and value is not None:
                    v = rec.decode_offset_value(value)
                    pending = PendingOffset(v.offset, v.leader_epoch, v.metadata, v.commit_timestamp, log_offset)
                    self.pending_txn.add(txn[0], txn[1], (parsed.group, parsed.topic, parsed.partition), pending)
                else:
                    log.warning("offsets partition %d: transactional record at %d is not an offset commit",
                                self.partition, log_offset)
            elif isinstance(parsed, rec.OffsetKey):
                self._apply_offset(parsed, value, log_offset)
            elif isinstance(parsed, rec.GroupKey):
                if value is None:
                    self.classic_values.pop(parsed.group, None)
                else:
                    self.classic_values[parsed.group] = rec.decode_group_value(value)
            else:
                for ext in self.extensions:
                    if ext.handles(parsed.version):
                        ext.replay(parsed, value, log_offset)
                        break
                else:
                    log.warning("offsets partition %d: record at %d has unknown key version %d",
                                self.partition, log_offset, parsed.version)
        except rec.RecordFormatError as e:
            log.error("offsets partition %d: record at %d skipped: %s", self.partition, log_offset, e)

    def _apply_offset(self, key: rec.OffsetKey, value: bytes | None, log_offset: int = -1) -> None:
        tp = (key.topic, key.partition)
        if value is None:
            self.pending_txn.drop(key.group, key.topic, key.partition)
            by_group = self.offsets.get(key.group)
            if by_group is not None:
                by_group.pop(tp, None)
                if not by_group:
                    del self.offsets[key.group]
            return
        v = rec.decode_offset_value(value)
        self.offsets.setdefault(key.group, {})[tp] = CommittedOffset(
            v.offset, v.leader_epoch, v.metadata, v.commit_timestamp, v.expire_timestamp, log_offset
        )

    # --- transactional offsets -----------------------------------------------------------------
    def complete_transaction(self, producer_id: int, commit: bool) -> None:
        """The producer's transaction ended (its marker is durable here): apply or drop its pending offsets.

        A pending offset replaces the committed one only if written after it (Kafka's rule). Idempotent: a
        marker replayed and then reported live (or the reverse) finds nothing pending the second time.
        """
        ended = self.pending_txn.end(producer_id)
        if commit:
            for (group_id, topic, partition), p in ended.items():
                by_tp = self.offsets.setdefault(group_id, {})
                current = by_tp.get((topic, partition))
                if current is None or current.log_offset < p.log_offset:
                    by_tp[(topic, partition)] = CommittedOffset(
                        p.offset, p.leader_epoch, p.metadata, p.commit_timestamp, -1, p.log_offset
                    )
                if self.active and group_id not in self.groups:  # a simple group (as a plain commit makes)
                    self.groups[group_id] = ClassicGroup(group_id, self)
        if ended and self.active:
            self._maybe_snapshot()

    async def write_transactional(
        self, producer_id: int, producer_epoch: int, records: Records, guard: object | None = None
    ) -> int:
        """Append offset records as the producer's transactional batch; once durable they are pending.

        ``guard``: the partition log's KIP-890 verification guard (``PartitionLog.verification_guard``).
        Raises GroupError (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE).
        """
        if not self.active:
            raise GroupError(ErrorCode.not_coordinator, f"offsets partition {self.partition} is not active here")
        if self.pending_txn.fenced(producer_id, producer_epoch):
            raise GroupError(ErrorCode.invalid_producer_epoch, f"producer {producer_id} epoch {producer_epoch} is old")
        batch = build_batch(records, now_ms(), producer_id, producer_epoch, TRANSACTIONAL_FLAG)
        async with self._append_lock:
            applied = await self._append(batch, records, (producer_id, producer_epoch), guard)
        self._since_snapshot += len(records)
        return await asyncio.shield(applied)

    def _restore_groups(self) -> None:
        for group in self.groups.values():
            group.shutdown()
        self.groups.clear()
        for group_id, value in self.classic_values.items():
            self.groups[group_id] = ClassicGroup.restore(group_id, self, value)
        for ext in self.extensions:
            ext.loaded()
        for group_id in self.offsets:
            if group_id not in self.groups:  # offsets only: a "simple" group (assign() consumers, admin tools)
                self.groups[group_id] = ClassicGroup(group_id, self)

    def live_record_count(self) -> int:
        """How many records a snapshot of the current state holds (offsets and group metadata)."""
        return sum(len(v) for v in self.offsets.values()) + len(self.classic_values) + sum(
            len(ext.snapshot_records()) for ext in self.extensions
        )

    # --- writes --------------------------------------------------------------------------------
    async def write(self, records: Records) -> int:
        """Append ``records`` and apply them once durable; returns the first one's log offset.

        Concurrent writes are coalesced into one batch per append (group commit), with at most
        ``MAX_IN_FLIGHT`` appends awaiting durability; each write still applies and answers only once its
        own records are durable, in log order. Raises GroupError (NOT_COORDINATOR,
        COORDINATOR_NOT_AVAILABLE) if the write fails; then nothing of it is applied.
        """
        return await asyncio.shield(self.enqueue(records))

    def enqueue(self, records: Records) -> asyncio.Future[int]:
        """Queue ``records`` for writing (no waiting): the future is ``write``'s outcome."""
        if not self.active:
            raise GroupError(ErrorCode.not_coordinator, f"offsets partition {self.partition} is not active here")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.add_done_callback(self._written)
        self._queue.append((records, done))
        self._since_snapshot += len(records)
        if self._flusher is None or self._flusher.done():
            self._flusher = self.spawn(self._flush())
        return done

    def _written(self, _done: asyncio.Future[int]) -> None:
        self._maybe_snapshot()

    async def _flush(self) -> None:
        while self._queue:
            in_flight = [f for f in self._in_flight if not f.done()]
            if len(in_flight) >= MAX_IN_FLIGHT:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            self._in_flight = in_flight
            async with self._append_lock:
                items = self._queue[:MAX_WRITES_PER_BATCH]
                del self._queue[: len(items)]
                records = [r for recs, _ in items for r in recs]
                try:
                    applied = await self._append(build_batch(records, now_ms()), records)
                except GroupError as e:
                    for _recs, done in items:
                        if not done.done():
                            done.set_exception(e)
                    continue
            self._in_flight.append(applied)
            applied.add_done_callback(functools.partial(_answer, items=items))

    async def _append(
        self, batch: bytes, records: Records, txn: tuple[int, int] | None = None, guard: object | None = None
    ) -> asyncio.Future[int]:
        """Hand one batch to the log (caller holds the append lock); the future resolves once applied."""
        try:
            headers = iter_headers(batch)
            durable = await (
                self.plog.append(batch, headers) if guard is None else self.plog.append(batch, headers, guard=guard)
            )
        except LogError as e:
            raise _write_error(e) from None
        applied: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        durable.add_done_callback(lambda f: self._on_durable(f, records, applied, txn))
        self._last_applied = applied
        return applied

    def _on_durable(
        self, durable: asyncio.Future[AppendResult], records: Records, applied: asyncio.Future[int],
        txn: tuple[int, int] | None = None,
    ) -> None:
        error = durable.exception() if not durable.cancelled() else asyncio.CancelledError()
        if error is not None:
            applied.set_exception(_write_error(error))
            applied.exception()  # nobody may be waiting (snapshots): no "never retrieved" noise
            return
        base = durable.result().base_offset
        for i, (key, value) in enumerate(records):
            self._apply(key, value, base + i, txn)
        applied.set_result(base)

    # --- snapshots -----------------------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        if (
            self.active
            and not self.pending_txn
            and self._since_snapshot > self.config.snapshot_records
            and (self._snapshot_task is None or self._snapshot_task.done())
        ):
            self._snapshot_task = self.spawn(self.snapshot())

    async def snapshot(self) -> None:
        """Write the whole live state at the log end, then drop everything before it.

        Not while transactional offsets are pending: their markers are written by the transaction
        coordinator outside this shard's append order, so a marker could land before the snapshot while its
        effect is missing from it (replay would then end with the stale value), and the log start could not
        move past their records anyway. The snapshot waits for the moment nothing is pending
        (``complete_transaction`` retries it); a hanging transaction is aborted by its timeout.
        """
        async with self._append_lock:
            last = self._last_applied
            if last is not None:
                await asyncio.wait([last])  # every earlier write is applied (or failed) too
            if self.pending_txn:
                return
            self.pending_txn.forget_idle()
            records = self._snapshot_records()
            self._since_snapshot = 0
            # The state is already applied, so the snapshot's records are written but not re-applied.
            batches = build_batches(records, now_ms(), self.config.snapshot_batch_bytes)
            pending = [await self._append(batch, []) for batch in batches]
            start = self.plog.high_watermark if not pending else -1
        try:
            if pending:
                start = (await asyncio.gather(*pending))[0]
            dropped = await self.plog.advance_start(start)
        except (GroupError, LogError, MetadataError) as e:  # e.g. etcd unreachable: the next snapshot retries
            log.warning("offsets partition %d: snapshot failed: %r", self.partition, e)
            return
        self.snapshots += 1
        log.info(
            "offsets partition %d: snapshot of %d records at offset %d; %d ledgers dropped",
            self.partition, len(records), start, len(dropped),
        )
        if dropped and self._delete_ledgers is not None:
            self._delete_ledgers(dropped)

    def _snapshot_records(self) -> Records:
        out: Records = []
        for group_id, by_tp in self.offsets.items():
            for (topic, partition), c in by_tp.items():
                value = rec.OffsetValue(c.offset, c.leader_epoch, c.metadata, c.commit_timestamp, c.expire_timestamp)
                out.append((rec.encode_offset_key(group_id, topic, partition), rec.encode_offset_value(value)))
        for group_id, group_value in self.classic_values.items():
            out.append((rec.encode_group_key(group_id), rec.encode_group_value(group_value)))
        for ext in self.extensions:
            out.extend(ext.snapshot_records())
        return out

    # --- housekeeping --------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background for as long as the shard lives."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (error := task.exception()) is None:
            return
        if isinstance(error, MetadataError | LogError | GroupError):  # expected outages: one line, no traceback
            log.warning("offsets partition %d: background task failed: %r", self.partition, error)
        else:
            log.error("offsets partition %d: background task failed", self.partition, exc_info=error)

    def expired_offsets(self, now: int, retention_ms: int) -> Records:
        """Tombstones for offsets past retention, and for groups left with neither members nor offsets."""
        out: Records = []
        for group_id, by_tp in self.offsets.items():
            group = self.groups.get(group_id)
            expired = 0
            for (topic, partition), c in by_tp.items():
                if c.expire_timestamp >= 0:
                    due = now >= c.expire_timestamp
                else:
                    base = group.offset_expiry_base_ms(c.commit_timestamp) if group is not None else c.commit_timestamp
                    due = base is not None and now >= base + retention_ms
                if due:
                    out.append((rec.encode_offset_key(group_id, topic, partition), None))
                    expired += 1
            if group is not None and expired == len(by_tp) and group.is_empty():
                out.extend(group.delete_records())
        for group_id, group in self.groups.items():  # empty groups that never committed anything
            if group_id not in self.offsets and group.is_empty() and group_id in self.classic_values:
                base = group.offset_expiry_base_ms(now)
                if base is not None and now >= base + retention_ms:
                    out.extend(group.delete_records())
        return out

    async def close(self) -> None:
        """Stop serving: timers cancelled, waiting requests answered NOT_COORDINATOR."""
        self.active = False
        queued, self._queue = self._queue, []
        for _records, done in queued:
            if not done.done():
                done.set_exception(GroupError(ErrorCode.not_coordinator, "offsets partition unloaded"))
                done.exception()
        for group in self.groups.values():
            group.shutdown()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
