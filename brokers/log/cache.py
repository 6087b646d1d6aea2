"""Tail cache: the newest entries of one partition, in memory, bounded by bytes per partition and, through a
``TailBudget`` shared by every partition of the broker, by bytes broker-wide (the oldest entries of any
partition go first)."""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

COMPACT_SLACK = 1024
"""Eviction-order records kept beyond twice the live entries before the stale ones are dropped."""


class TailBudget:
    """Bytes of tail caches broker-wide, against ``total_bytes`` (0: no broker-wide bound). It keeps the
    caches' entries in the order they were added; over the bound, the oldest entry of whichever partition holds
    it is evicted (one entry per partition may stay: a cache never evicts its newest)."""

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self.used = 0
        self._order: deque[tuple[TailCache, int]] = deque()  # (cache, first offset of an entry), oldest first
        self._caches: set[TailCache] = set()  # caches holding entries now (compaction needs their lengths)

    def _added(self, cache: TailCache, first: int, size: int) -> None:
        self.used += size
        if not self.total:
            return
        self._caches.add(cache)
        self._order.append((cache, first))
        while self.used > self.total and self._order:
            owner, offset = self._order.popleft()
            if owner.first_offset == offset and len(owner) > 1:
                owner._evict_oldest()
        live = sum(len(c) for c in self._caches)
        if len(self._order) > 2 * live + COMPACT_SLACK:
            self._caches = {c for c in self._caches if len(c)}
            self._order = deque((c, f) for c, f in self._order if c.first_offset is not None and f >= c.first_offset)


class TailCache:
    """Recent record batches by offset; appended in offset order, evicted oldest first."""

    def __init__(self, budget_bytes: int, shared: TailBudget | None = None) -> None:
        self._budget = budget_bytes
        self._shared = shared
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._data: list[memoryview] = []
        self._head = 0
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._firsts) - self._head

    @property
    def memory_bytes(self) -> int:
        """Bytes of batches held (at most the budget, or one entry larger than it)."""
        return self._bytes

    @property
    def first_offset(self) -> int | None:
        return self._firsts[self._head] if len(self) else None

    def _resize(self, delta: int) -> None:
        self._bytes += delta
        if self._shared is not None:
            self._shared.used += delta

    def _evict_oldest(self) -> None:
        self._resize(-len(self._data[self._head]))
        self._data[self._head] = memoryview(b"")
        self._head += 1
        if self._head > 1024 and self._head * 2 > len(self._firsts):
            del self._firsts[: self._head], self._lasts[: self._head], self._data[: self._head]
            self._head = 0

    def add(self, first: int, last: int, batches: memoryview) -> None:
        """Add an entry's batches; entries must arrive in offset order."""
        if self._lasts and first <= self._lasts[-1]:
            self.clear()
        self._firsts.append(first)
        self._lasts.append(last)
        self._data.append(batches)
        self._bytes += len(batches)
        while self._bytes > self._budget and len(self) > 1:
            self._evict_oldest()
        if self._shared is not None:
            self._shared._added(self, first, len(batches))

    def read(self, offset: int, max_bytes: int, below: int) -> list[memoryview] | None:
        """Batches from the entry holding ``offset`` on, up to ``max_bytes`` (at least one entry),
        only entries ending before ``below``. None if ``offset`` is not cached."""
        if not len(self) or offset < self._firsts[self._head]:
            return None
        i = bisect_right(self._firsts, offset, self._head) - 1
        if i < self._head or self._lasts[i] < offset:
            return None
        out: list[memoryview] = []
        total = 0
        while i < len(self._firsts) and self._lasts[i] < below:
            data = self._data[i]
            if out and total + len(data) > max_bytes:
                break
            out.append(data)
            total += len(data)
            i += 1
        return out

    def truncate_after(self, offset: int) -> None:
        """Drop entries at or past ``offset`` (after a failed write)."""
        while len(self) and self._lasts[-1] >= offset:
            self._resize(-len(self._data[-1]))
            self._firsts.pop()
            self._lasts.pop()
            self._data.pop()

    def clear(self) -> None:
        self._resize(-self._bytes)
        self._firsts.clear()
        self._lasts.clear()
        self._data.clear()
        self._head = 0
