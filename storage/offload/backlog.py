"""Offload backlog accounting: closed ledgers waiting for offload, their bytes and the oldest one's age."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OffloadBacklog:
    """What waits for offload: ``ledgers`` closed but not offloaded, their payload ``bytes``, the age in
    seconds of the one waiting longest, how many partitions have a failing offload and the last error."""

    ledgers: int = 0
    bytes: int = 0
    oldest_age_s: float = 0.0
    failing_partitions: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class _Waiting:
    size: int
    since: float


class BacklogTracker:
    """Per partition: the ledgers seen waiting (and since when), and the last failure."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: dict[tuple[str, int], dict[int, _Waiting]] = {}
        self._errors: dict[tuple[str, int], str] = {}

    def waiting(self, topic_id: str, partition: int, ledgers: dict[int, int]) -> None:
        """The ledgers (id → payload bytes) of a partition that wait for offload now."""
        now = self._clock()
        before = self._waiting.get((topic_id, partition), {})
        current = {lid: before.get(lid) or _Waiting(size, now) for lid, size in ledgers.items()}
        if current:
            self._waiting[(topic_id, partition)] = current
        else:
            self._waiting.pop((topic_id, partition), None)

    def closed(self, topic_id: str, partition: int, ledger_id: int, size: int) -> None:
        """One more ledger of the partition waits for offload (from now, unless already counted)."""
        self._waiting.setdefault((topic_id, partition), {}).setdefault(ledger_id, _Waiting(size, self._clock()))

    def done(self, topic_id: str, partition: int, ledger_id: int) -> None:
        waiting = self._waiting.get((topic_id, partition))
        if waiting is not None:
            waiting.pop(ledger_id, None)
            if not waiting:
                del self._waiting[(topic_id, partition)]

    def failed(self, topic_id: str, partition: int, error: str | None) -> None:
        """Record (or with None clear) the partition's latest offload failure."""
        if error is None:
            self._errors.pop((topic_id, partition), None)
        else:
            self._errors[(topic_id, partition)] = error

    def forget(self, topic_id: str, partition: int) -> None:
        """The partition is no longer offloaded here (moved to another broker)."""
        self._waiting.pop((topic_id, partition), None)
        self._errors.pop((topic_id, partition), None)

    def snapshot(self, topic_id: str | None = None, partition: int | None = None) -> OffloadBacklog:
        """Totals over every partition, or one topic, or one partition."""
        now = self._clock()
        ledgers = size = 0
        oldest = 0.0
        for (tid, p), waiting in self._waiting.items():
            if (topic_id is not None and tid != topic_id) or (partition is not None and p != partition):
                continue
            ledgers += len(waiting)
            size += sum(w.size for w in waiting.values())
            oldest = max([oldest, *(now - w.since for w in waiting.values())])
        errors = [
            e for (tid, p), e in self._errors.items()
            if (topic_id is None or tid == topic_id) and (partition is None or p == partition)
        ]  # fmt: skip
        return OffloadBacklog(ledgers, size, oldest, len(errors), errors[-1] if errors else None)
