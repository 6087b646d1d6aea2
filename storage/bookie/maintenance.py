"""Background upkeep of a bookie's journal: index checkpoints, file reclamation, compaction.

* **Checkpoints** (storage/bookie/checkpoint.py) are written after every ``checkpoint_bytes`` of journal,
  on a clean shutdown, and when reclamation waits for one; never more often than ``cost_ratio`` times the
  last checkpoint's own duration, so a large index costs a bounded share of the time.
* **Reclamation** deletes journal files with nothing live in them (``Index.reclaimable``), but only files
  before the checkpoint's position: a restart loads the checkpoint and replays from that position, so every
  record after it must still be on disk.
* **Compaction** picks complete files whose live entries are below ``compact_threshold`` of their bytes,
  copies their live records (entries, the newest fence records of live ledgers, still-needed delete
  records) to the end of the journal, and then the file can be reclaimed like any dead one. Entries never
  change once written, so a copy is the entry itself; whatever is applied last wins in the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from storage.bookie import checkpoint
from storage.bookie.index import Index, LiveRecord
from storage.bookie.journal import Journal, JournalRecord, RecordKind
from storage.ledger.api import DiskError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_INLINE_CHECKPOINT_SECONDS = 0.1  # a checkpoint expected to take less may be written inline
_READ_CHUNK = 256


@dataclass(frozen=True, slots=True)
class MaintenanceConfig:
    """Knobs of checkpointing and compaction."""

    checkpoint_bytes: int = 256 * MiB
    cost_ratio: float = 20.0
    compact_threshold: float = 0.2
    compact_max_bytes: int = 64 * MiB
    background: bool = True  # False: only explicit calls (tests)


@dataclass(frozen=True, slots=True)
class CheckpointStats:
    """The last checkpoint written: its position, size and how long it took."""

    file_no: int
    offset: int
    size: int
    seconds: float


class Maintenance:
    """Checkpoints, reclamation and compaction for one bookie (all on the bookie's event loop)."""

    def __init__(
        self,
        bookie_id: str,
        data_dir: Path,
        index: Index,
        journal: Journal,
        config: MaintenanceConfig,
        checkpoint_file: int,
    ) -> None:
        self._id = bookie_id
        self._dir = data_dir
        self._index = index
        self._journal = journal
        self._config = config
        self._checkpoint_file = checkpoint_file  # files before it are reflected in the stored checkpoint
        self._since_checkpoint = journal.replayed_bytes
        self._last_seconds = 0.0
        self._next_allowed = 0.0
        self._checkpoint_lock = asyncio.Lock()
        self._writing: asyncio.Future[int] | None = None  # the checkpoint write in its thread
        self._work_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.last_checkpoint: CheckpointStats | None = None
        self.compacted_files = 0
        self.reclaimed_files = 0

    # --- triggers -----------------------------------------------------------------------------
    def note_applied(self, nbytes: int) -> None:
        """Journal bytes applied: schedule a checkpoint once enough have accumulated."""
        self._since_checkpoint += nbytes
        if self._since_checkpoint >= self._config.checkpoint_bytes:
            self.kick()

    def kick(self) -> None:
        """Run a maintenance pass in the background (compaction, checkpoint if due, reclamation)."""
        if self._closed or not self._config.background or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._background(), name=f"bookie-{self._id}-maintenance")

    async def _background(self) -> None:
        try:
            await self.compact()
            if self._since_checkpoint >= self._config.checkpoint_bytes and self._allowed():
                await self.checkpoint()
            await self.reclaim(inline_checkpoint=True)
        except asyncio.CancelledError:
            raise
        except (OSError, DiskError) as exc:  # disk full or failing: the journal logs the state change
            log.debug("bookie %s: journal maintenance postponed: %s", self._id, exc)
            self._next_allowed = time.monotonic() + 1.0
            self._retry_later()
        except Exception:
            log.exception("bookie %s: journal maintenance failed", self._id)

    def _allowed(self) -> bool:
        return time.monotonic() >= self._next_allowed

    def _retry_later(self) -> None:
        if self._timer is not None or self._closed or not self._config.background:
            return
        delay = max(0.05, self._next_allowed - time.monotonic())

        def fire() -> None:
            self._timer = None
            self.kick()

        self._timer = asyncio.get_running_loop().call_later(delay, fire)

    # --- checkpoints --------------------------------------------------------------------------
    async def checkpoint(self) -> CheckpointStats:
        """Write the index checkpoint now (consistent: taken between two group commits).

        Writes never overlap, and a write is never abandoned half way: if the caller is cancelled, the
        write finishes in its thread (``stop`` waits for it), so an older checkpoint can never replace a
        newer one.
        """
        async with self._checkpoint_lock:
            await self._wait_for_write()
            started = time.monotonic()
            file_no, offset = self._journal.applied_position
            snap = self._index.snapshot()
            pending = self._since_checkpoint
            cp = checkpoint.Checkpoint(self._id, file_no, offset, snap)
            self._writing = asyncio.ensure_future(asyncio.to_thread(checkpoint.write, self._dir, cp))
            size = await asyncio.shield(self._writing)
            seconds = time.monotonic() - started
            self._since_checkpoint -= pending
            self._checkpoint_file = max(self._checkpoint_file, file_no)
            self._last_seconds = seconds
            self._next_allowed = time.monotonic() + seconds * self._config.cost_ratio
            self.last_checkpoint = CheckpointStats(file_no, offset, size, seconds)
            log.debug("bookie %s: checkpoint at %d:%d, %d bytes, %.3fs", self._id, file_no, offset, size, seconds)
            return self.last_checkpoint

    async def _wait_for_write(self) -> None:
        writing = self._writing
        if writing is not None and not writing.done():
            await asyncio.wait([writing])
            if not writing.cancelled() and writing.exception() is not None:
                log.warning("bookie %s: an abandoned checkpoint write failed: %r", self._id, writing.exception())

    # --- reclamation --------------------------------------------------------------------------
    async def reclaim(self, inline_checkpoint: bool) -> list[int]:
        """Delete dead journal files before the checkpoint; if dead files wait for a checkpoint, write one
        (inline when cheap or asked, else later in the background)."""
        async with self._work_lock:
            if self._closed:
                return []
            journal = self._journal
            dead = self._index.reclaimable(journal.applied_file_no)
            if any(f >= self._checkpoint_file for f in dead):
                cheap = self._last_seconds < _INLINE_CHECKPOINT_SECONDS and self._index.entry_count < 100_000
                if self._allowed() and (inline_checkpoint or cheap):
                    await self.checkpoint()
                else:
                    self._retry_later()
            ready = [f for f in dead if f < self._checkpoint_file]
            if ready:
                self._index.forget_files(ready)
                await journal.remove_files(ready)
                self.reclaimed_files += len(ready)
                log.info("bookie %s reclaimed journal files %s", self._id, ready)
            return ready

    # --- compaction ---------------------------------------------------------------------------
    def candidates(self) -> list[int]:
        """Complete journal files worth compacting, oldest first."""
        out = []
        below = self._journal.applied_file_no
        for file_no in self._index.files():
            if file_no >= below:
                continue
            live, size = self._index.file_usage(file_no)
            if size and live < self._config.compact_threshold * size and self._index.live_records(file_no):
                out.append(file_no)
        return out

    async def compact(self) -> list[int]:
        """Copy the live records of sparse files forward; returns the files emptied (reclaimed later)."""
        emptied: list[int] = []
        if self._journal.disk_error is not None:
            return emptied  # copying needs space the disk does not have; deletes and reclaiming still work
        async with self._work_lock:
            copied = 0
            for file_no in self.candidates():
                if self._closed or copied >= self._config.compact_max_bytes:
                    break
                records = self._index.live_records(file_no)
                done = await self._copy_forward(file_no, records)
                if done is None:
                    continue
                copied += done
                emptied.append(file_no)
                self.compacted_files += 1
                log.info("bookie %s compacted journal file %d: %d live records copied forward",
                         self._id, file_no, len(records))  # fmt: skip
        return emptied

    async def _copy_forward(self, file_no: int, records: list[LiveRecord]) -> int | None:
        """Append copies of ``records``; returns the bytes copied, or None if an entry could not be read."""
        journal = self._journal
        futures: list[asyncio.Future[JournalRecord]] = []
        copied = 0
        entries = [r for r in records if r.kind is RecordKind.ENTRY and r.location is not None]
        for start in range(0, len(entries), _READ_CHUNK):
            chunk = entries[start : start + _READ_CHUNK]
            locs = [r.location for r in chunk if r.location is not None]
            payloads, error = await journal.read_many([(x.file_no, x.offset, x.size, x.crc) for x in locs])
            if error is not None:
                log.warning("bookie %s: cannot compact journal file %d: %s", self._id, file_no, error)
                await asyncio.gather(*futures, return_exceptions=True)
                return None
            try:
                for rec, loc, payload in zip(chunk, locs, payloads, strict=True):
                    if self._index.is_deleted(rec.ledger_id):
                        continue
                    futures.append(
                        journal.append(
                            RecordKind.ENTRY, rec.ledger_id, rec.entry_id, loc.lac, loc.ledger_length, payload, loc.crc
                        )
                    )
                    copied += loc.size
            except DiskError:
                await asyncio.gather(*futures, return_exceptions=True)
                raise
        others = [r for r in records if r.kind is not RecordKind.ENTRY]
        try:
            futures.extend(journal.append(r.kind, r.ledger_id, -1, -1, 0, b"", 0) for r in others)
        except DiskError:
            await asyncio.gather(*futures, return_exceptions=True)
            raise
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return copied

    # --- shutdown -----------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop background work (a pass in progress is cancelled; what it did is consistent)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._wait_for_write()
