"""The ledger seam, in BookKeeper's shape.

``create_ledger(E, Qw, Qa)`` gives a writer; ``writer.append(entry)`` assigns the next entry id at once
and returns a future that completes, in entry order, once ``Qa`` bookies of the entry's write set have
fsynced it and every earlier entry is confirmed. ``open_ledger(id, recover=True)`` fences the ensemble so
the old writer can never confirm again, recovers the tail and closes the ledger. Readers read by entry id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class LedgerError(Exception):
    """Base class of ledger errors."""


class LedgerFenced(LedgerError):
    """The ledger was fenced by a recovering reader: this writer may never confirm another entry."""


class LedgerClosed(LedgerError):
    """The ledger is closed; no more appends."""


class NotEnoughBookies(LedgerError):
    """Fewer than the ack quorum of bookies are reachable (retriable on a new ledger)."""


class DiskError(LedgerError):
    """A bookie's disk is full or failing: it could not make a write durable (nothing was acknowledged).

    It clears by itself once the disk takes writes again; the broker reports KAFKA_STORAGE_ERROR."""


class StorageUnavailable(NotEnoughBookies, DiskError):
    """Fewer than the ack quorum of bookies took a write because their disks are full or failing."""


class NoSuchLedger(LedgerError):
    """The ledger does not exist (never created, or deleted)."""


class NoSuchEntry(LedgerError):
    """The entry is not (or no longer) stored."""


class LedgerState(Enum):
    OPEN = "OPEN"
    IN_RECOVERY = "IN_RECOVERY"
    CLOSED = "CLOSED"


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    """Ledger metadata as kept in the MetadataStore (changed only by compare-and-swap)."""

    ledger_id: int
    ensemble: tuple[str, ...]
    write_quorum: int
    ack_quorum: int
    state: LedgerState
    last_entry_id: int = -1
    length: int = 0


class LedgerWriter(Protocol):
    @property
    def ledger_id(self) -> int: ...

    @property
    def last_add_confirmed(self) -> int:
        """The highest entry id confirmed so far (-1 before the first)."""
        ...

    @property
    def length(self) -> int:
        """Total payload bytes appended so far."""
        ...

    def append(self, entry: bytes | memoryview) -> asyncio.Future[int]:
        """Queue ``entry``; its id is assigned now, the future resolves with it when confirmed.

        Raises LedgerClosed/LedgerFenced at once if the writer can no longer append; the future fails
        with LedgerFenced or NotEnoughBookies if the entry can never be confirmed.
        """
        ...

    async def close(self) -> int:
        """Wait for outstanding appends, mark the ledger CLOSED; returns the last entry id."""
        ...


class LedgerReader(Protocol):
    @property
    def ledger_id(self) -> int: ...

    @property
    def info(self) -> LedgerInfo: ...

    async def read(self, first: int, last: int) -> list[bytes]:
        """Entries ``first..last`` inclusive. On an open ledger entries past the LAC may be read too,
        like BookKeeper's readUnconfirmedEntries; on a closed one, ``last`` may not pass the last entry."""
        ...

    async def read_last_add_confirmed(self) -> int: ...

    async def close(self) -> None: ...


class LedgerClient(Protocol):
    async def create_ledger(
        self, ensemble_size: int, write_quorum: int, ack_quorum: int
    ) -> LedgerWriter: ...

    async def open_ledger(self, ledger_id: int, recover: bool = True) -> LedgerReader:
        """Open for reading; with ``recover`` fence the ensemble, recover the tail and close it."""
        ...

    async def delete_ledger(self, ledger_id: int) -> None: ...

    async def ledger_info(self, ledger_id: int) -> LedgerInfo | None: ...

    async def close(self) -> None: ...

