"""The owner's bytes: entries a broker wrote to the ledgers of partitions it owns, kept for their offload.

The partition log hands each entry over when it is confirmed (durable on the bookies), with the ledger and
entry id it got. The offloader then builds the ledger's segment from these bytes instead of reading the
closed ledger back from the bookies. The bytes are the very buffers the log wrote (no copy; the tail cache
holds views of the same buffers), counted against one byte budget for the whole broker.

A ledger's bytes are usable only as a complete run of entries 0..n: the first entry missing (a load after a
restart or a takeover, an entry handed over out of order) or the budget running out marks the ledger
"spilled", its bytes are released at once and its segment is built from the bookies as before. The
offloader cuts the run at the closed ledger's last entry id, so entries past it (none are expected: only
confirmed entries are handed over) never reach a segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class _Kept:
    topic_id: str
    partition: int
    entries: list[bytes | bytearray | memoryview] = field(default_factory=list)
    size: int = 0


@dataclass(frozen=True, slots=True)
class OwnerBytesStats:
    """Figures of the owner's bytes: what is kept now and what was given up."""

    bytes: int
    ledgers: int
    spilled: int
    """Ledgers dropped because of the budget or a gap since this broker started."""
    budget: int


class OwnerBytes:
    """Confirmed entries per ledger being written or waiting for offload, within ``budget_bytes``."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if budget_bytes < 0:
            raise ValueError(f"owner bytes budget must be >= 0, got {budget_bytes}")
        self._budget = budget_bytes
        self._bytes = 0
        self._kept: dict[int, _Kept] = {}
        self._spilled: dict[int, tuple[str, int]] = {}
        self._spilled_total = 0

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def held(self) -> int:
        """Bytes kept now (summed over every ledger)."""
        return self._bytes

    def stats(self) -> OwnerBytesStats:
        return OwnerBytesStats(self._bytes, len(self._kept), self._spilled_total, self._budget)

    def bytes_of(self, topic_id: str, partition: int) -> int:
        """Bytes kept for one partition (a per-partition memory figure)."""
        return sum(k.size for k in self._kept.values() if (k.topic_id, k.partition) == (topic_id, partition))

    def add(
        self, topic_id: str, partition: int, ledger_id: int, entry_id: int, entry: bytes | bytearray | memoryview
    ) -> bool:
        """Keep a confirmed entry; False when the ledger is (now) spilled and will be read from the bookies."""
        if ledger_id in self._spilled:
            return False
        kept = self._kept.get(ledger_id)
        expected = 0 if kept is None else len(kept.entries)
        size = len(memoryview(entry))
        if entry_id != expected or self._bytes + size > self._budget:
            self._spill(ledger_id, topic_id, partition)
            return False
        if kept is None:
            kept = self._kept[ledger_id] = _Kept(topic_id, partition)
        kept.entries.append(entry)
        kept.size += size
        self._bytes += size
        return True

    def entries(self, ledger_id: int, last_entry_id: int) -> Sequence[bytes | bytearray | memoryview] | None:
        """Entries 0..``last_entry_id`` of the ledger, or None when they are not all kept here."""
        kept = self._kept.get(ledger_id)
        if kept is None or last_entry_id < 0 or len(kept.entries) < last_entry_id + 1:
            return None
        return kept.entries[: last_entry_id + 1]

    def drop(self, ledger_id: int) -> None:
        """Forget the ledger (offloaded, or gone from the log)."""
        self._spilled.pop(ledger_id, None)
        kept = self._kept.pop(ledger_id, None)
        if kept is not None:
            self._bytes -= kept.size

    def drop_partition(self, topic_id: str, partition: int) -> None:
        """Forget every ledger of the partition (it left this broker)."""
        for ledger_id in [lid for lid, k in self._kept.items() if (k.topic_id, k.partition) == (topic_id, partition)]:
            self.drop(ledger_id)
        for ledger_id in [lid for lid, owner in self._spilled.items() if owner == (topic_id, partition)]:
            del self._spilled[ledger_id]

    def retain(self, topic_id: str, partition: int, ledger_ids: set[int]) -> None:
        """Forget the partition's ledgers not in ``ledger_ids`` (they left its log: DeleteRecords, retention)."""
        gone = [lid for lid, k in self._kept.items() if (k.topic_id, k.partition) == (topic_id, partition)]
        gone += [lid for lid, owner in self._spilled.items() if owner == (topic_id, partition)]
        for ledger_id in gone:
            if ledger_id not in ledger_ids:
                self.drop(ledger_id)

    def _spill(self, ledger_id: int, topic_id: str, partition: int) -> None:
        kept = self._kept.pop(ledger_id, None)
        if kept is not None:
            self._bytes -= kept.size
        self._spilled[ledger_id] = (topic_id, partition)
        self._spilled_total += 1
