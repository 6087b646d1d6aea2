"""The bookie's in-memory index: ledger → entry → journal position, plus fence flags, LACs and deletions.

The index is a pure function of the journal: ``apply`` is fed every durable record in journal order, both
when the journal is replayed at start-up and live, as each group commit completes. So a restart rebuilds
exactly the state that had been acknowledged. (A later checkpoint will persist this state together with
the journal position it reflects and replay only the records after that position.)

It also tracks which ledgers each journal file holds, so that whole files can be reclaimed once every
ledger in them is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from storage.bookie.journal import JournalRecord, RecordKind


class EntryLocation(NamedTuple):
    """Where an entry's payload lies in the journal, with its CRC-32C and the ledger length up to it."""

    file_no: int
    offset: int
    size: int
    crc: int
    ledger_length: int


@dataclass(slots=True)
class LedgerState:
    """What a bookie knows of one ledger (mutable: owned by the index)."""

    entries: dict[int, EntryLocation] = field(default_factory=dict)
    lac: int = -1
    fenced: bool = False  # adds without the recovery flag are refused (set before the record is durable)
    fence_durable: bool = False  # a fence record for this ledger is on disk


class Index:
    """Ledger id → LedgerState, the set of deleted ledgers, and which ledgers each journal file holds."""

    def __init__(self) -> None:
        self._ledgers: dict[int, LedgerState] = {}
        self._deleted: set[int] = set()
        self._file_ledgers: dict[int, set[int]] = {}  # file → ledgers with entries or fences in it
        self._file_deletes: dict[int, set[int]] = {}  # file → ledgers with a delete record in it
        self._entries = 0

    def apply(self, rec: JournalRecord) -> None:
        """Take one durable journal record into account (called in journal order)."""
        ledger_id = rec.ledger_id
        if rec.kind is RecordKind.ENTRY:
            if ledger_id in self._deleted:
                return
            state = self._ledgers.get(ledger_id)
            if state is None:
                state = self._ledgers[ledger_id] = LedgerState()
            if rec.entry_id not in state.entries:
                self._entries += 1
            state.entries[rec.entry_id] = EntryLocation(
                rec.file_no, rec.offset, rec.size, rec.crc, rec.ledger_length
            )
            if rec.lac > state.lac:
                state.lac = rec.lac
            in_file = self._file_ledgers.get(rec.file_no)
            if in_file is None:
                in_file = self._file_ledgers[rec.file_no] = set()
            in_file.add(ledger_id)
        elif rec.kind is RecordKind.FENCE:
            if ledger_id in self._deleted:
                return
            state = self._ledgers.get(ledger_id)
            if state is None:
                state = self._ledgers[ledger_id] = LedgerState()
            state.fenced = state.fence_durable = True
            self._in_file(self._file_ledgers, rec.file_no, ledger_id)
        else:
            self._deleted.add(ledger_id)
            gone = self._ledgers.pop(ledger_id, None)
            if gone is not None:
                self._entries -= len(gone.entries)
            self._in_file(self._file_deletes, rec.file_no, ledger_id)

    @staticmethod
    def _in_file(table: dict[int, set[int]], file_no: int, ledger_id: int) -> None:
        ledgers = table.get(file_no)
        if ledgers is None:
            ledgers = table[file_no] = set()
        ledgers.add(ledger_id)

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

    # --- reclaiming journal files -------------------------------------------------------------
    def reclaimable(self, below_file: int) -> list[int]:
        """Journal files older than ``below_file`` that hold nothing live, ascending.

        A file is dead when every ledger with entries or fences in it is deleted, and no other remaining
        file still holds entries of a ledger whose delete record it carries (else dropping the delete
        record would bring those entries back at the next start-up).
        """
        files = set(self._file_ledgers) | set(self._file_deletes)
        dead: list[int] = []
        changed = True
        while changed:
            changed = False
            for file_no in sorted(files):
                if file_no >= below_file:
                    continue
                if not self._file_ledgers.get(file_no, set()) <= self._deleted:
                    continue
                deletes = self._file_deletes.get(file_no, set())
                if any(
                    ledger in ledgers
                    for other, ledgers in self._file_ledgers.items()
                    if other != file_no and other in files
                    for ledger in deletes
                ):
                    continue
                files.discard(file_no)
                dead.append(file_no)
                changed = True
        return sorted(dead)

    def forget_files(self, file_nos: list[int]) -> None:
        """The files are gone: stop tracking them."""
        for file_no in file_nos:
            self._file_ledgers.pop(file_no, None)
            self._file_deletes.pop(file_no, None)
