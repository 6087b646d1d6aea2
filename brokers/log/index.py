"""Per-ledger entry index: entry id → first offset and running max timestamp (for time lookups)."""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right


class LedgerIndex:
    """Entries of one ledger in id order. Built while writing, or by one scan of an older ledger."""

    def __init__(self) -> None:
        self._firsts = array("q")
        self._max_ts = array("q")  # running maximum, so it is sorted
        self.last_offset = -1

    def __len__(self) -> int:
        return len(self._firsts)

    def add(self, first_offset: int, last_offset: int, max_timestamp: int) -> int:
        """Record the next entry; returns its entry id."""
        running = max(max_timestamp, self._max_ts[-1]) if self._max_ts else max_timestamp
        self._firsts.append(first_offset)
        self._max_ts.append(running)
        self.last_offset = last_offset
        return len(self._firsts) - 1

    def truncate(self, entries: int) -> None:
        del self._firsts[entries:]
        del self._max_ts[entries:]

    def entry_for_offset(self, offset: int) -> int:
        """Id of the entry holding ``offset`` (the last entry starting at or before it)."""
        return max(0, bisect_right(self._firsts, offset) - 1)

    def entry_for_timestamp(self, timestamp: int) -> int | None:
        """Id of the first entry holding a record with timestamp >= ``timestamp``, if any."""
        i = bisect_left(self._max_ts, timestamp)
        return i if i < len(self._max_ts) else None

    @property
    def max_timestamp(self) -> int:
        return self._max_ts[-1] if self._max_ts else -1

    def first_offset(self, entry_id: int) -> int:
        return self._firsts[entry_id]
