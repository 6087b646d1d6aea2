"""The bookie server core: ledger entries in a group-committed journal, indexed in memory.

One ``Bookie`` owns a data directory::

    <data_dir>/bookie_id          this bookie's id (written on first start, checked afterwards)
    <data_dir>/journal/           journal-{n:08d}.log files (storage/bookie/journal.py)

Every state change (entry, fence, delete) is a journal record; a request is answered only once its record
is durable, and the index is rebuilt from the journal at start-up, so acknowledged state survives a crash.
Fencing follows BookKeeper: once fenced, a ledger refuses adds that lack the recovery flag, and ``fence``
answers with the ledger's last-add-confirmed only after the fence record is on disk and every add that got
in before it is indexed. The transport (in-process or TCP) lives in storage/bookie/protocol.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from storage.bookie.index import EntryLocation, Index
from storage.bookie.journal import DEFAULT_MAX_BATCH_BYTES, DEFAULT_ROLL_SIZE, Journal, RecordKind
from storage.entry import BookieUnavailable, StoredEntry, entry_crc
from storage.ledger.api import LedgerFenced, NoSuchEntry, NoSuchLedger

log = logging.getLogger(__name__)

DEFAULT_RANGE_BYTES = 8 * 1024 * 1024


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


class Bookie:
    """A bookie server core. Create with ``await Bookie.open(data_dir)``; all calls on that event loop."""

    def __init__(self, bookie_id: str, data_dir: Path, index: Index) -> None:
        self._id = bookie_id
        self._dir = data_dir
        self._index = index
        self._journal: Journal | None = None
        self._deleting: set[int] = set()
        self._closed = False
        self._reclaiming = False
        self._reclaim_again = False

    @classmethod
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        bookie_id: str | None = None,
        journal_roll_size: int = DEFAULT_ROLL_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> Bookie:
        """Open (creating) the bookie in ``data_dir`` and rebuild its index from the journal.

        ``bookie_id`` defaults to the id stored in the directory, or a new random one on first start; a
        different id than the stored one is refused (the directory belongs to another bookie).
        """
        path = Path(data_dir)
        resolved = await asyncio.to_thread(_resolve_id, path, bookie_id)
        index = Index()
        bookie = cls(resolved, path, index)
        bookie._journal = await Journal.open(
            path / "journal", index.apply, roll_size=journal_roll_size, max_batch_bytes=max_batch_bytes
        )
        log.info(
            "bookie %s open in %s: %d ledgers, %d entries", resolved, path, index.ledger_count, index.entry_count
        )
        return bookie

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
        journal = self._live_journal()
        self._check_exists(ledger_id)
        state = self._index.ledger(ledger_id)
        if state is not None and state.fenced and not recovery:
            raise LedgerFenced(f"ledger {ledger_id} is fenced on bookie {self._id}")
        if crc is None:
            crc = entry_crc(payload)
        await journal.append(RecordKind.ENTRY, ledger_id, entry_id, lac, ledger_length, payload, crc)

    async def fence(self, ledger_id: int) -> int:
        """Fence the ledger durably (creating its state if this bookie never saw it); returns its LAC."""
        journal = self._live_journal()
        self._check_exists(ledger_id)
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
        await journal.append(RecordKind.DELETE, ledger_id, -1, -1, 0, b"", 0)
        self._deleting.discard(ledger_id)
        await self._reclaim()

    async def _reclaim(self) -> None:
        """Remove whole journal files whose ledgers are all deleted (never the file being written)."""
        if self._reclaiming:
            self._reclaim_again = True
            return
        self._reclaiming = True
        try:
            while True:
                self._reclaim_again = False
                journal = self._journal
                if self._closed or journal is None:
                    return
                dead = self._index.reclaimable(journal.applied_file_no)
                if dead:
                    self._index.forget_files(dead)
                    await journal.remove_files(dead)
                    log.info("bookie %s reclaimed journal files %s", self._id, dead)
                if not self._reclaim_again:
                    break
        finally:
            self._reclaiming = False

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
        loc = self._locate(ledger_id, entry_id)
        data, error = await journal.read_many([(loc.file_no, loc.offset, loc.size, loc.crc)])
        if error is not None:
            raise error
        return StoredEntry(entry_id, loc.ledger_length, data[0])

    async def read_range(
        self, ledger_id: int, first: int, last: int, max_bytes: int = DEFAULT_RANGE_BYTES
    ) -> list[StoredEntry]:
        """Consecutive entries from ``first``: stops before the first entry it lacks (or that fails its
        CRC), after ``last``, or once ``max_bytes`` are gathered; at least one entry, else it raises."""
        journal = self._live_journal()
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
        if not data:
            raise error or NoSuchEntry(f"entry {ledger_id}:{first} is not on bookie {self._id}")
        return [StoredEntry(i, x.ledger_length, d) for i, x, d in zip(ids, locs, data, strict=False)]

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
        ok = not self._closed and stats is not None and stats.failed is None
        return BookieHealth(
            self._id,
            ok,
            self._index.ledger_count,
            self._index.entry_count,
            0 if stats is None else stats.files,
            0 if stats is None else stats.pending,
            0 if stats is None else stats.fsyncs,
            "closed" if self._closed else (None if stats is None else stats.failed),
        )

    async def close(self) -> None:
        """Finish queued writes and close the journal; later calls raise BookieUnavailable."""
        if self._closed:
            return
        self._closed = True
        if self._journal is not None:
            await self._journal.close()


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
