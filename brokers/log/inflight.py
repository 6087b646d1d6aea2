"""Entries a partition log has given offsets to but not yet confirmed, kept until they are durable.

Each entry keeps its bytes (header + patched batches) so that, when the ledger it was written to fails,
it can be written again — same offsets, same bytes — to the next ledger. Entries are confirmed strictly
in offset order from the front; the produce requests waiting on an entry (the one that appended it,
and retries of its idempotent batches) are answered when it is confirmed or when the log gives up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from brokers.codec.batch import BatchHeader


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an appended batch landed: its base offset, and the log start offset then."""

    base_offset: int
    log_start_offset: int


class PendingEntry:
    """One unconfirmed entry: offsets ``first..last``, its bytes, its batches' headers and waiters."""

    __slots__ = ("entry", "entry_id", "first", "headers", "last", "ledger_id", "max_timestamp", "waiters")

    def __init__(self, first: int, last: int, max_timestamp: int, entry: bytearray, headers: list[BatchHeader]):
        self.first = first
        self.last = last
        self.max_timestamp = max_timestamp
        self.entry = entry
        self.headers = headers
        self.ledger_id = -1  # the ledger it was last written to (-1: not written anywhere yet)
        self.entry_id = -1
        self.waiters: list[tuple[asyncio.Future[AppendResult], int]] = []  # (future, base offset to answer)

    def answer(self, log_start_offset: int) -> None:
        """Resolve every waiter (the entry is durable)."""
        for fut, base in self.waiters:
            if not fut.done():
                fut.set_result(AppendResult(base, log_start_offset))
        self.waiters.clear()

    def fail(self, make_error: Callable[[], Exception]) -> None:
        """Fail every waiter, each with a fresh ``make_error()``; the entry itself stays."""
        for fut, _base in self.waiters:
            if not fut.done():
                fut.set_exception(make_error())
        self.waiters.clear()


class InflightEntries:
    """Unconfirmed entries in offset order."""

    def __init__(self) -> None:
        self._entries: deque[PendingEntry] = deque()
        self._bytes = 0

    @property
    def memory_bytes(self) -> int:
        """Bytes of the unconfirmed entries (kept to be written again if their ledger fails)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[PendingEntry]:
        return iter(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def push(self, entry: PendingEntry) -> None:
        self._entries.append(entry)
        self._bytes += len(entry.entry)

    def front(self) -> PendingEntry | None:
        return self._entries[0] if self._entries else None

    def pop_front(self) -> PendingEntry:
        entry = self._entries.popleft()
        self._bytes -= len(entry.entry)
        return entry

    def holding(self, offset: int) -> PendingEntry | None:
        """The entry whose offsets include ``offset``."""
        for entry in self._entries:
            if entry.first <= offset <= entry.last:
                return entry
            if entry.first > offset:
                break
        return None

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
