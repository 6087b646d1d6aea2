"""The bookie server core: ledger entries in a group-committed journal, indexed in memory.

One ``Bookie`` owns a data directory::

    <data_dir>/bookie_id          this bookie's id (written on first start, checked afterwards)
    <data_dir>/LOCK               held (flock) while a process has the bookie open
    <data_dir>/journal/           journal-{n:08d}.log files (storage/bookie/journal.py)
    <data_dir>/index.checkpoint   the index as of a journal position (storage/bookie/checkpoint.py)

Every state change (entry, fence, delete) is a journal record; a request is answered only once its record
is durable. At start-up the index is loaded from the checkpoint and the journal after its position is
replayed (the whole journal when there is no usable checkpoint), so acknowledged state survives a crash.
Checkpoints, reclamation of dead journal files and compaction run in storage/bookie/maintenance.py.
Fencing follows BookKeeper: once fenced, a ledger refuses adds that lack the recovery flag, and ``fence``
answers with the ledger's last-add-confirmed only after the fence record is on disk and every add that got
in before it is indexed. The transport (in-process or TCP) lives in storage/bookie/protocol.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from metadata.dirlock import DirectoryLocked, lock_directory
from metadata.disk_reserve import DEFAULT_RESERVE_BYTES
from storage.bookie import checkpoint
from storage.bookie.index import EntryLocation, Index
from storage.bookie.journal import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_ROLL_SIZE,
    HEADER_SIZE,
    BookieDiskError,
    FileReclaimed,
    Journal,
    JournalRecord,
    JournalStartError,
    RecordKind,
)
from storage.bookie.maintenance import CheckpointStats, Maintenance, MaintenanceConfig
from storage.entry import BookieUnavailable, CorruptEntry, StoredEntry, entry_crc
from storage.ledger.api import LedgerFenced, NoSuchEntry, NoSuchLedger

log = logging.getLogger(__name__)

DEFAULT_RANGE_BYTES = 8 * 1024 * 1024
_RELOCATE_TRIES = 3


@dataclass(frozen=True, slots=True)
class BookieHealth:
    """A bookie's self-report: ``ok`` is False once it is closed or its journal has failed."""

    bookie_id: str
    ok: bool
    ledgers: int
    entries: int
    journal_files: int
    journal_pending: int
    fsyncs: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StartupReport:
    """How the last open went: from a checkpoint or a full rescan, journal bytes replayed, seconds taken."""

    from_checkpoint: bool
    replayed_bytes: int
    seconds: float
    ledgers: int
    entries: int


DataDirLocked = DirectoryLocked  # the name callers catch


class Bookie:
    """A bookie server core. Create with ``await Bookie.open(data_dir)``; all calls on that event loop."""

    def __init__(self, bookie_id: str, data_dir: Path, index: Index, lock_fd: int) -> None:
        self._id = bookie_id
        self._dir = data_dir
        self._index = index
        self._lock_fd = lock_fd
        self._journal: Journal | None = None
        self._maintenance: Maintenance | None = None
        self._deleting: set[int] = set()
        self._closed = False
        self.startup = StartupReport(False, 0, 0.0, 0, 0)

    @classmethod
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        bookie_id: str | None = None,
        journal_roll_size: int = DEFAULT_ROLL_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        maintenance: MaintenanceConfig | None = None,
        use_checkpoint: bool = True,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> Bookie:
        """Open (creating) the bookie in ``data_dir``: load the index checkpoint and replay the journal after
        it (or, with no usable checkpoint or ``use_checkpoint=False``, the whole journal).

        ``bookie_id`` defaults to the id stored in the directory, or a new random one on first start; a
        different id than the stored one is refused (the directory belongs to another bookie). Raises
        DataDirLocked if the directory is open elsewhere. ``reserve_bytes``: the journal's reserve file,
        released on a full disk so that deletes still go through (storage/bookie/journal.py).
        """
        started = time.monotonic()
        path = Path(data_dir)
        lock_fd = await asyncio.to_thread(_lock, path)
        try:
            resolved = await asyncio.to_thread(_resolve_id, path, bookie_id)
            cp = await _load_checkpoint(path, resolved) if use_checkpoint else None
            index = await asyncio.to_thread(Index.restore, cp.index) if cp is not None else Index()
            bookie = cls(resolved, path, index, lock_fd)
            journal_dir = path / "journal"
            try:
                bookie._journal = await Journal.open(
                    journal_dir, bookie._apply, roll_size=journal_roll_size, max_batch_bytes=max_batch_bytes,
                    start=None if cp is None else (cp.file_no, cp.offset), reserve_bytes=reserve_bytes,
                )  # fmt: skip
            except JournalStartError as exc:
                log.warning("bookie %s: checkpoint unusable (%s); rescanning the whole journal", resolved, exc)
                cp = None
                await asyncio.to_thread(checkpoint.remove, path)  # never to be trusted again
                bookie._index = index = Index()
                bookie._journal = await Journal.open(
                    journal_dir, bookie._apply, roll_size=journal_roll_size, max_batch_bytes=max_batch_bytes,
                    reserve_bytes=reserve_bytes,
                )  # fmt: skip
        except BaseException:
            os.close(lock_fd)
            raise
        journal = bookie._journal
        bookie._maintenance = Maintenance(
            resolved, path, index, journal, maintenance or MaintenanceConfig(), 0 if cp is None else cp.file_no
        )
        if cp is None and journal.replayed_bytes:  # a full rescan: checkpoint its result right away
            try:
                await bookie._maintenance.checkpoint()
            except OSError as exc:  # a full disk: the next start rescans again, nothing is lost
                log.warning("bookie %s: no checkpoint after the rescan: %s", resolved, exc)
        bookie.startup = StartupReport(
            cp is not None, journal.replayed_bytes, time.monotonic() - started, index.ledger_count, index.entry_count
        )
        log.info(
            "bookie %s open in %s in %.2fs (%s, %d journal bytes replayed): %d ledgers, %d entries",
            resolved, path, bookie.startup.seconds, "from checkpoint" if cp is not None else "full rescan",
            journal.replayed_bytes, index.ledger_count, index.entry_count,
        )  # fmt: skip
        return bookie

    def _apply(self, rec: JournalRecord) -> None:
        self._index.apply(rec)
        if self._maintenance is not None:
            self._maintenance.note_applied(HEADER_SIZE + rec.size)

    @property
    def bookie_id(self) -> str:
        return self._id

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise BookieUnavailable("bookie is not open")
        return self._journal

    def _live_journal(self) -> Journal:
        if self._closed or self._journal is None:
            raise BookieUnavailable(f"bookie {self._id} is closed")
        return self._journal

    def _check_exists(self, ledger_id: int) -> None:
        if ledger_id in self._deleting or self._index.is_deleted(ledger_id):
            raise NoSuchLedger(f"ledger {ledger_id} is deleted on bookie {self._id}")

    # --- writes -------------------------------------------------------------------------------
    async def add_entry(
        self,
        ledger_id: int,
        entry_id: int,
        lac: int,
        payload: bytes | memoryview,
        *,
        ledger_length: int = 0,
        crc: int | None = None,
        recovery: bool = False,
    ) -> None:
        """Store an entry durably. Refused with LedgerFenced if the ledger is fenced, unless ``recovery``.

        ``crc`` is the payload's CRC-32C as computed by the writer (computed here when None); the caller
        vouches for it (the TCP server checks it against the payload before calling).
        """
        await self.add_nowait(
            ledger_id, entry_id, lac, payload, ledger_length=ledger_length, crc=crc, recovery=recovery
        )

    def add_nowait(
        self,
        ledger_id: int,
        entry_id: int,
        lac: int,
        payload: bytes | memoryview,
        *,
        ledger_length: int = 0,
        crc: int | None = None,
        recovery: bool = False,
    ) -> asyncio.Future[JournalRecord]:
        """``add_entry`` without a coroutine (the TCP server's hot path): checks now, raising at once, and
        returns the journal's future, which resolves once the entry is durable."""
        journal = self._live_journal()
        self._check_exists(ledger_id)
        state = self._index.ledger(ledger_id)
        if state is not None and state.fenced and not recovery:
            raise LedgerFenced(f"ledger {ledger_id} is fenced on bookie {self._id}")
        if crc is None:
            crc = entry_crc(payload)
        return journal.append(RecordKind.ENTRY, ledger_id, entry_id, lac, ledger_length, payload, crc)

    async def fence(self, ledger_id: int) -> int:
        """Fence the ledger durably (creating its state if this bookie never saw it); returns its LAC."""
        journal = self._live_journal()
        self._check_exists(ledger_id)
        if journal.disk_error is not None:  # refused before the ledger is marked: nothing changes
            raise BookieDiskError(f"bookie {self._id} refuses writes for now: {journal.disk_error}")
        state = self._index.mark_fenced(ledger_id)
        if not state.fence_durable:
            await journal.append(RecordKind.FENCE, ledger_id, -1, -1, 0, b"", 0)
        current = self._index.ledger(ledger_id)
        if current is None:
            raise NoSuchLedger(f"ledger {ledger_id} was deleted while being fenced")
        return current.lac

    async def delete_ledger(self, ledger_id: int) -> None:
        """Delete the ledger: its entries become unreadable at once and its adds are refused.

        Deleting a ledger this bookie never saw still records the deletion (so a late add is refused).
        """
        journal = self._live_journal()
        if self._index.is_deleted(ledger_id):
            return
        self._deleting.add(ledger_id)
        try:
            await journal.append(RecordKind.DELETE, ledger_id, -1, -1, 0, b"", 0)
        finally:
            self._deleting.discard(ledger_id)
        maintenance = self._maintenance
        if maintenance is not None:
            try:
                # files already dead go now; on a full disk inline, as freeing space is the point
                await maintenance.reclaim(inline_checkpoint=journal.disk_error is not None)
            except OSError as exc:  # the checkpoint could not be written: the files go on a later pass
                log.warning("bookie %s: journal files not reclaimed yet: %s", self._id, exc)
            maintenance.kick()  # compaction, and the rest once a checkpoint covers it

    # --- journal upkeep -----------------------------------------------------------------------
    @property
    def maintenance(self) -> Maintenance:
        if self._maintenance is None:
            raise BookieUnavailable("bookie is not open")
        return self._maintenance

    async def checkpoint(self) -> CheckpointStats:
        """Write the index checkpoint now."""
        self._live_journal()
        return await self.maintenance.checkpoint()

    async def compact(self) -> list[int]:
        """Compact sparse journal files and reclaim what is dead now; returns the files reclaimed."""
        self._live_journal()
        await self.maintenance.compact()
        return await self.maintenance.reclaim(inline_checkpoint=True)

    # --- reads --------------------------------------------------------------------------------
    def _locate(self, ledger_id: int, entry_id: int) -> EntryLocation:
        self._check_exists(ledger_id)
        state = self._index.ledger(ledger_id)
        loc = None if state is None else state.entries.get(entry_id)
        if loc is None:
            raise NoSuchEntry(f"entry {ledger_id}:{entry_id} is not on bookie {self._id}")
        return loc

    def _ledger_entries(self, ledger_id: int) -> dict[int, EntryLocation]:
        state = self._index.ledger(ledger_id)
        return {} if state is None else state.entries

    async def read_entry(self, ledger_id: int, entry_id: int) -> StoredEntry:
        """One entry, CRC-checked (CorruptEntry on mismatch); NoSuchEntry / NoSuchLedger if absent."""
        journal = self._live_journal()
        for _ in range(_RELOCATE_TRIES):
            loc = self._locate(ledger_id, entry_id)
            data, error = await journal.read_many([(loc.file_no, loc.offset, loc.size, loc.crc)])
            if isinstance(error, FileReclaimed):
                continue  # compacted away meanwhile: the index knows the new copy (or that it is deleted)
            if error is not None:
                raise error
            return StoredEntry(entry_id, loc.ledger_length, data[0])
        raise self._missing_file(ledger_id, entry_id)

    def _missing_file(self, ledger_id: int, entry_id: int) -> CorruptEntry:
        # never NoSuchEntry: recovery would count it as evidence that the entry was never written
        return CorruptEntry(f"entry {ledger_id}:{entry_id}: its journal file is missing on bookie {self._id}")

    async def read_range(
        self, ledger_id: int, first: int, last: int, max_bytes: int = DEFAULT_RANGE_BYTES
    ) -> list[StoredEntry]:
        """Consecutive entries from ``first``: stops before the first entry it lacks (or that fails its
        CRC), after ``last``, or once ``max_bytes`` are gathered; at least one entry, else it raises."""
        journal = self._live_journal()
        for _ in range(_RELOCATE_TRIES):
            first_loc = self._locate(ledger_id, first)
            entries = self._ledger_entries(ledger_id)
            locs = [first_loc]
            ids = [first]
            total = first_loc.size
            entry_id = first + 1
            while entry_id <= last and total < max_bytes:
                loc = entries.get(entry_id)
                if loc is None:
                    break
                locs.append(loc)
                ids.append(entry_id)
                total += loc.size
                entry_id += 1
            data, error = await journal.read_many([(x.file_no, x.offset, x.size, x.crc) for x in locs])
            if data:
                return [StoredEntry(i, x.ledger_length, d) for i, x, d in zip(ids, locs, data, strict=False)]
            if not isinstance(error, FileReclaimed):
                raise error or NoSuchEntry(f"entry {ledger_id}:{first} is not on bookie {self._id}")
        raise self._missing_file(ledger_id, first)

    async def read_lac(self, ledger_id: int) -> int:
        """The highest last-add-confirmed carried by the ledger's entries here (-1 if none)."""
        self._live_journal()
        self._check_exists(ledger_id)
        state = self._index.ledger(ledger_id)
        return -1 if state is None else state.lac

    def entry_location(self, ledger_id: int, entry_id: int) -> tuple[Path, int, int] | None:
        """(journal file, payload offset, size) of a stored entry, for tools and fault-injection tests."""
        state = self._index.ledger(ledger_id)
        loc = None if state is None else state.entries.get(entry_id)
        if loc is None or self._journal is None:
            return None
        return self._journal.path_of(loc.file_no), loc.offset, loc.size

    # --- state --------------------------------------------------------------------------------
    async def health(self) -> BookieHealth:
        journal = self._journal
        stats = None if journal is None else journal.stats()
        # a disk that refuses writes makes the bookie read-only, as in BookKeeper: not placed in new ensembles
        ok = not self._closed and stats is not None and stats.failed is None and stats.disk_error is None
        error = None if stats is None else (stats.failed or stats.disk_error)
        return BookieHealth(
            self._id,
            ok,
            self._index.ledger_count,
            self._index.entry_count,
            0 if stats is None else stats.files,
            0 if stats is None else stats.pending,
            0 if stats is None else stats.fsyncs,
            "closed" if self._closed else error,
        )

    async def close(self) -> None:
        """Finish queued writes, close the journal and write the index checkpoint (so the next start
        replays nothing); later calls raise BookieUnavailable."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._maintenance is not None:
                await self._maintenance.stop()
            if self._journal is not None:
                await self._journal.close()
                if self._maintenance is not None and not self._journal.failed:
                    try:
                        await self._maintenance.checkpoint()
                    except OSError as exc:  # a full disk: the next start replays the journal after the last one
                        log.warning("bookie %s: no checkpoint at close: %s", self._id, exc)
        finally:
            self._unlock()

    async def crash(self) -> None:
        """Stop as a crash would (tests): queued writes not yet being written are lost, no checkpoint."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._maintenance is not None:
                await self._maintenance.stop()
            if self._journal is not None:
                await self._journal.abort()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)


async def _load_checkpoint(data_dir: Path, bookie_id: str) -> checkpoint.Checkpoint | None:
    try:
        cp = await asyncio.to_thread(checkpoint.read, data_dir)
    except (checkpoint.CheckpointError, OSError) as exc:
        log.warning("bookie %s: ignoring the index checkpoint (%s); rescanning the whole journal", bookie_id, exc)
        return None
    if cp is not None and cp.bookie_id != bookie_id:
        log.warning("bookie %s: the checkpoint is bookie %s's; rescanning the whole journal", bookie_id, cp.bookie_id)
        return None
    return cp


def _lock(data_dir: Path) -> int:
    return lock_directory(data_dir, "bookie")


def _resolve_id(data_dir: Path, wanted: str | None) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    id_file = data_dir / "bookie_id"
    if id_file.exists():
        stored = id_file.read_text().strip()
        if wanted is not None and wanted != stored:
            raise ValueError(f"{data_dir} belongs to bookie {stored!r}, not {wanted!r}")
        return stored
    bookie_id = wanted or f"bookie-{uuid.uuid4().hex[:12]}"
    tmp = id_file.with_suffix(".tmp")
    tmp.write_text(bookie_id + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(id_file)
    return bookie_id
