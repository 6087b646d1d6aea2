"""The bookie's in-memory index: ledger → entry → journal position, plus fence flags, LACs and deletions.

The index is a function of the journal: ``apply`` is fed every durable record in journal order, both when
the journal is replayed at start-up and live, as each group commit completes. A checkpoint
(storage/bookie/checkpoint.py) stores the index with the journal position it reflects, so a restart
loads it and replays only the records after that position.

It also keeps, per journal file, what still needs the file: the current copies of live entries (count
and bytes), the newest fence record of live ledgers, and which ledgers have records or delete records
in it. That tells which files can be reclaimed whole, and which are pinned by only a few live records
(compaction copies those forward, then the file goes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from storage.bookie.journal import HEADER_SIZE, JournalRecord, RecordKind


class EntryLocation(NamedTuple):
    """Where an entry's payload lies in the journal, with its CRC-32C, LAC and the ledger length up to it."""

    file_no: int
    offset: int
    size: int
    crc: int
    ledger_length: int
    lac: int = -1


@dataclass(slots=True)
class LedgerState:
    """What a bookie knows of one ledger (mutable: owned by the index)."""

    entries: dict[int, EntryLocation] = field(default_factory=dict)
    lac: int = -1
    fenced: bool = False  # adds without the recovery flag are refused (set before the record is durable)
    fence_durable: bool = False  # a fence record for this ledger is on disk
    fence_file: int = 0  # the journal file holding the newest fence record (0: none)


@dataclass(frozen=True, slots=True)
class LiveRecord:
    """A record compaction must copy out of a file: an entry, a fence or a delete."""

    kind: RecordKind
    ledger_id: int
    entry_id: int = -1
    location: EntryLocation | None = None


class Index:
    """Ledger id → LedgerState, the deleted ledgers, and what each journal file still holds."""

    def __init__(self) -> None:
        self._ledgers: dict[int, LedgerState] = {}
        self._deleted: set[int] = set()
        self._file_ledgers: dict[int, set[int]] = {}  # file → ledgers with entries or fences in it
        self._file_deletes: dict[int, set[int]] = {}  # file → ledgers with a delete record in it
        self._file_size: dict[int, int] = {}  # file → end of its last applied record
        self._live_count: dict[int, int] = {}  # file → current copies of live entries in it
        self._live_bytes: dict[int, int] = {}  # file → their bytes (headers included)
        self._fences: dict[int, int] = {}  # file → live ledgers whose newest fence record is in it
        self._entries = 0

    # --- applying records ---------------------------------------------------------------------
    def apply(self, rec: JournalRecord) -> None:
        """Take one durable journal record into account (called in journal order)."""
        ledger_id = rec.ledger_id
        file_no = rec.file_no
        end = rec.offset + rec.size
        if end > self._file_size.get(file_no, 0):
            self._file_size[file_no] = end
        if rec.kind is RecordKind.ENTRY:
            if ledger_id in self._deleted:
                return
            state = self._ledgers.get(ledger_id)
            if state is None:
                state = self._ledgers[ledger_id] = LedgerState()
            old = state.entries.get(rec.entry_id)
            if old is None:
                self._entries += 1
            else:
                self._unlive(old)
            loc = EntryLocation(file_no, rec.offset, rec.size, rec.crc, rec.ledger_length, rec.lac)
            state.entries[rec.entry_id] = loc
            self._live(loc)
            if rec.lac > state.lac:
                state.lac = rec.lac
            _add(self._file_ledgers, file_no, ledger_id)
        elif rec.kind is RecordKind.FENCE:
            if ledger_id in self._deleted:
                return
            state = self._ledgers.get(ledger_id)
            if state is None:
                state = self._ledgers[ledger_id] = LedgerState()
            state.fenced = state.fence_durable = True
            if state.fence_file:
                self._fences[state.fence_file] -= 1
            state.fence_file = file_no
            self._fences[file_no] = self._fences.get(file_no, 0) + 1
            _add(self._file_ledgers, file_no, ledger_id)
        else:
            self._deleted.add(ledger_id)
            gone = self._ledgers.pop(ledger_id, None)
            if gone is not None:
                self._entries -= len(gone.entries)
                for loc in gone.entries.values():
                    self._unlive(loc)
                if gone.fence_file:
                    self._fences[gone.fence_file] -= 1
            _add(self._file_deletes, file_no, ledger_id)

    def _live(self, loc: EntryLocation) -> None:
        self._live_count[loc.file_no] = self._live_count.get(loc.file_no, 0) + 1
        self._live_bytes[loc.file_no] = self._live_bytes.get(loc.file_no, 0) + HEADER_SIZE + loc.size

    def _unlive(self, loc: EntryLocation) -> None:
        self._live_count[loc.file_no] -= 1
        self._live_bytes[loc.file_no] -= HEADER_SIZE + loc.size

    # --- queries ------------------------------------------------------------------------------
    def ledger(self, ledger_id: int) -> LedgerState | None:
        return self._ledgers.get(ledger_id)

    def is_deleted(self, ledger_id: int) -> bool:
        return ledger_id in self._deleted

    def mark_fenced(self, ledger_id: int) -> LedgerState:
        """Refuse further adds at once; the caller then makes a fence record durable."""
        state = self._ledgers.get(ledger_id)
        if state is None:
            state = self._ledgers[ledger_id] = LedgerState()
        state.fenced = True
        return state

    @property
    def ledger_count(self) -> int:
        return len(self._ledgers)

    @property
    def entry_count(self) -> int:
        return self._entries

    def ledgers(self) -> Iterator[tuple[int, LedgerState]]:
        """Every live ledger and its state (do not mutate)."""
        return iter(self._ledgers.items())

    @property
    def deleted(self) -> frozenset[int]:
        return frozenset(self._deleted)

    def files(self) -> list[int]:
        """Journal files the index knows of, ascending."""
        return sorted(set(self._file_size) | set(self._file_ledgers) | set(self._file_deletes))

    def file_usage(self, file_no: int) -> tuple[int, int]:
        """(bytes of live entries, bytes of records) in a journal file."""
        return self._live_bytes.get(file_no, 0), self._file_size.get(file_no, 0)

    # --- reclaiming and compacting journal files ----------------------------------------------
    def _pinned_by_live(self, file_no: int) -> bool:
        return self._live_count.get(file_no, 0) > 0 or self._fences.get(file_no, 0) > 0

    def _where(self, ledger_ids: set[int]) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
        """For each of ``ledger_ids``: the files holding its entry/fence records, and its delete records."""
        holders: dict[int, set[int]] = {}
        deleters: dict[int, set[int]] = {}
        for table, out in ((self._file_ledgers, holders), (self._file_deletes, deleters)):
            for file_no, ledgers in table.items():
                for ledger_id in ledgers & ledger_ids:
                    out.setdefault(ledger_id, set()).add(file_no)
        return holders, deleters

    @staticmethod
    def _delete_needed(
        ledger_id: int, file_no: int, remaining: set[int], holders: dict[int, set[int]], deleters: dict[int, set[int]]
    ) -> bool:
        """Whether the delete record of ``ledger_id`` in ``file_no`` must stay (for a full rescan): another
        remaining file still holds records of the ledger, and no later remaining file repeats the delete
        after all of them."""
        held = [f for f in holders.get(ledger_id, ()) if f != file_no and f in remaining]
        if not held:
            return False
        last_holder = max(held)
        return not any(f != file_no and f in remaining and f > last_holder for f in deleters.get(ledger_id, ()))

    def reclaimable(self, below_file: int) -> list[int]:
        """Journal files older than ``below_file`` that hold nothing needed, ascending.

        A file is dead when no live ledger has its current copy of an entry or its newest fence record
        there, and none of its delete records is still needed: while another remaining file holds records
        of a deleted ledger, a delete record after them must remain, or a full rescan of the journal
        (without a checkpoint) would bring those entries back.
        """
        remaining = set(self.files())
        holders, deleters = self._where(self._deleted)
        dead: list[int] = []
        changed = True
        while changed:
            changed = False
            for file_no in sorted(remaining):
                if file_no >= below_file or self._pinned_by_live(file_no):
                    continue
                deletes = self._file_deletes.get(file_no, ())
                if any(self._delete_needed(d, file_no, remaining, holders, deleters) for d in deletes):
                    continue
                remaining.discard(file_no)
                dead.append(file_no)
                changed = True
        return sorted(dead)

    def live_records(self, file_no: int) -> list[LiveRecord]:
        """What compaction must copy forward before ``file_no`` can go: the current copies of live entries
        in it, the newest fence records of live ledgers in it, and its delete records still needed."""
        out: list[LiveRecord] = []
        if self._live_count.get(file_no, 0) or self._fences.get(file_no, 0):
            for ledger_id, state in self._ledgers.items():
                if state.fence_file == file_no:
                    out.append(LiveRecord(RecordKind.FENCE, ledger_id))
                if ledger_id in self._file_ledgers.get(file_no, ()):
                    out.extend(
                        LiveRecord(RecordKind.ENTRY, ledger_id, entry_id, loc)
                        for entry_id, loc in state.entries.items()
                        if loc.file_no == file_no
                    )
        deletes = self._file_deletes.get(file_no, set())
        holders, deleters = self._where(deletes)
        remaining = set(self.files())
        out.extend(
            LiveRecord(RecordKind.DELETE, d)
            for d in sorted(deletes)
            if self._delete_needed(d, file_no, remaining, holders, deleters)
        )
        return out

    def forget_files(self, file_nos: list[int]) -> None:
        """The files are gone: stop tracking them."""
        for file_no in file_nos:
            self._file_ledgers.pop(file_no, None)
            self._file_deletes.pop(file_no, None)
            for table in (self._file_size, self._live_count, self._live_bytes, self._fences):
                table.pop(file_no, None)

    # --- checkpoints --------------------------------------------------------------------------
    def snapshot(self) -> IndexSnapshot:
        """A copy of the state to serialize off the event loop (entry locations are immutable)."""
        return IndexSnapshot(
            ledgers=[
                (ledger_id, s.lac, s.fence_durable, s.fence_file if s.fence_durable else 0, dict(s.entries))
                for ledger_id, s in self._ledgers.items()
                if s.entries or s.fence_durable
            ],
            deleted=sorted(self._deleted),
            file_ledgers={f: sorted(v) for f, v in self._file_ledgers.items()},
            file_deletes={f: sorted(v) for f, v in self._file_deletes.items()},
            file_size=dict(self._file_size),
        )

    @classmethod
    def restore(cls, snap: IndexSnapshot) -> Index:
        """The index a snapshot describes."""
        index = cls()
        index._deleted = set(snap.deleted)
        index._file_ledgers = {f: set(v) for f, v in snap.file_ledgers.items()}
        index._file_deletes = {f: set(v) for f, v in snap.file_deletes.items()}
        index._file_size = dict(snap.file_size)
        for ledger_id, lac, fenced, fence_file, entries in snap.ledgers:
            state = LedgerState(entries, lac, fenced, fenced, fence_file if fenced else 0)
            index._ledgers[ledger_id] = state
            index._entries += len(entries)
            if state.fence_file:
                index._fences[fence_file] = index._fences.get(fence_file, 0) + 1
            for loc in entries.values():
                index._live(loc)
        return index


@dataclass(frozen=True, slots=True)
class IndexSnapshot:
    """The index's state: ``ledgers`` holds (ledger id, LAC, fenced, fence file, entries)."""

    ledgers: list[tuple[int, int, bool, int, dict[int, EntryLocation]]]
    deleted: list[int]
    file_ledgers: dict[int, list[int]]
    file_deletes: dict[int, list[int]]
    file_size: dict[int, int]


def _add(table: dict[int, set[int]], file_no: int, ledger_id: int) -> None:
    ledgers = table.get(file_no)
    if ledgers is None:
        ledgers = table[file_no] = set()
    ledgers.add(ledger_id)
