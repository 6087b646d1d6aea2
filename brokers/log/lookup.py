"""Finding offsets and timestamps in a partition's ledgers: per-ledger entry indexes and cached readers.

The owner builds each ledger's index while writing it; a ledger it did not write (after a takeover) is
indexed by one sequential scan on first use. Reads never recover a ledger: the owner knows its tail.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import AsyncIterator, Sequence

from brokers.log.index import LedgerIndex
from brokers.log.reader import LedgerReaders
from metadata.models import LedgerRef
from storage import log_entry
from storage.ledger.api import LedgerClient, LedgerReader

SCAN_CHUNK = 64
READ_RUN = 16


async def scan_ledger(reader: LedgerReader, last_entry: int) -> AsyncIterator[bytes]:
    """Every entry ``0..last_entry`` of a ledger in order, read a chunk at a time (index rebuilds, replays)."""
    first = 0
    while first <= last_entry:
        last = min(last_entry, first + SCAN_CHUNK - 1)
        for entry in await reader.read(first, last):
            yield entry
        first = last + 1


class LedgerLookup:
    """Entry indexes and readers of one partition's ledgers."""

    def __init__(self, ledgers: LedgerClient) -> None:
        self.indexes: dict[int, LedgerIndex] = {}
        self.readers = LedgerReaders(ledgers)

    @staticmethod
    def ledger_for_offset(ledgers: Sequence[LedgerRef], offset: int) -> LedgerRef:
        """The ledger holding ``offset`` (or the one it would be appended to)."""
        i = bisect_right([r.first_offset for r in ledgers], offset) - 1
        while i > 0 and ledgers[i].first_offset == ledgers[i - 1].first_offset:
            i -= 1  # empty ledgers share their successor's first offset
        while i < len(ledgers) - 1 and ledgers[i].closed and ledgers[i].last_offset < offset:
            i += 1
        return ledgers[max(i, 0)]

    async def index_of(self, ref: LedgerRef) -> LedgerIndex:
        """The ledger's entry index, scanning the ledger once if this broker did not write it."""
        index = self.indexes.get(ref.ledger_id)
        if index is None:
            index = LedgerIndex()
            reader = await self.readers.get(ref.ledger_id)
            async for entry in scan_ledger(reader, reader.info.last_entry_id):
                head = log_entry.decode_header(entry)
                index.add(head.first_offset, head.last_offset, head.max_timestamp)
            self.indexes[ref.ledger_id] = index
        return index

    async def read(self, ledgers: Sequence[LedgerRef], offset: int, max_bytes: int, below: int) -> list[memoryview]:
        """Batches from the entry holding ``offset`` on, up to ``max_bytes`` (at least one entry), only
        entries ending before ``below`` (the high watermark)."""
        out: list[memoryview] = []
        total = 0
        while offset < below and total < max_bytes:
            ref = self.ledger_for_offset(ledgers, offset)
            index = await self.index_of(ref)
            if not len(index) or index.last_offset < offset:
                break
            entry_id = index.entry_for_offset(offset)
            last_id = min(len(index) - 1, entry_id + READ_RUN - 1, index.entry_for_offset(below - 1))
            reader = await self.readers.get(ref.ledger_id)
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

    async def entries_from(self, ledgers: Sequence[LedgerRef], offset: int) -> tuple[int, list[bytes]] | None:
        """The entry holding ``offset`` and the rest of its ledger's entries."""
        ref = self.ledger_for_offset(ledgers, offset)
        index = await self.index_of(ref)
        if not len(index):
            return None
        entry_id = index.entry_for_offset(offset)
        reader = await self.readers.get(ref.ledger_id)
        return entry_id, await reader.read(entry_id, len(index) - 1)

    async def find_by_timestamp(self, ledgers: Sequence[LedgerRef], timestamp: int, below: int) -> memoryview | None:
        """The batches of the first entry holding a record with a timestamp >= ``timestamp``, if any."""
        for ref in ledgers:
            index = await self.index_of(ref)
            if index.max_timestamp < timestamp:
                continue
            entry_id = index.entry_for_timestamp(timestamp)
            if entry_id is None:
                continue
            reader = await self.readers.get(ref.ledger_id)
            entry = (await reader.read(entry_id, entry_id))[0]
            if log_entry.decode_header(entry).last_offset >= below:
                return None
            return log_entry.batches_of(entry)
        return None

    async def max_timestamp_entry(self, ledgers: Sequence[LedgerRef], below: int) -> memoryview | None:
        """The batches of the entry holding the record with the largest timestamp (the first such)."""
        best: tuple[int, int, int] | None = None  # max_ts, ledger position, entry id
        for pos, ref in enumerate(ledgers):
            index = await self.index_of(ref)
            if len(index) and (best is None or index.max_timestamp > best[0]):
                entry_id = index.entry_for_timestamp(index.max_timestamp)
                if entry_id is not None:
                    best = (index.max_timestamp, pos, entry_id)
        if best is None:
            return None
        reader = await self.readers.get(ledgers[best[1]].ledger_id)
        entry = (await reader.read(best[2], best[2]))[0]
        if log_entry.decode_header(entry).last_offset >= below:
            return None
        return log_entry.batches_of(entry)
