"""An in-memory LedgerClient for unit tests of one broker module (never evidence that storage works)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

from storage.ledger.api import LedgerClosed, LedgerFenced, LedgerInfo, LedgerState, NoSuchEntry, NoSuchLedger


class _Ledger:
    def __init__(self, info: LedgerInfo) -> None:
        self.info = info
        self.entries: list[bytes] = []
        self.fenced = False


class MemoryWriter:
    def __init__(self, ledger: _Ledger) -> None:
        self._ledger = ledger
        self._closed = False

    @property
    def ledger_id(self) -> int:
        return self._ledger.info.ledger_id

    @property
    def last_add_confirmed(self) -> int:
        return len(self._ledger.entries) - 1

    @property
    def length(self) -> int:
        return sum(len(e) for e in self._ledger.entries)

    def append(self, entry: bytes | memoryview) -> asyncio.Future[int]:
        if self._closed:
            raise LedgerClosed("closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._ledger.fenced:
            fut.set_exception(LedgerFenced("fenced"))
            return fut
        self._ledger.entries.append(bytes(entry))
        fut.set_result(len(self._ledger.entries) - 1)
        return fut

    async def close(self) -> int:
        self._closed = True
        last = len(self._ledger.entries) - 1
        self._ledger.info = replace(self._ledger.info, state=LedgerState.CLOSED, last_entry_id=last)
        return last


class MemoryReader:
    def __init__(self, ledger: _Ledger) -> None:
        self._ledger = ledger

    @property
    def ledger_id(self) -> int:
        return self._ledger.info.ledger_id

    @property
    def info(self) -> LedgerInfo:
        return self._ledger.info

    async def read(self, first: int, last: int) -> list[bytes]:
        if first < 0 or last >= len(self._ledger.entries) or first > last:
            raise NoSuchEntry(f"{first}..{last}")
        return self._ledger.entries[first : last + 1]

    async def read_last_add_confirmed(self) -> int:
        return len(self._ledger.entries) - 1

    async def close(self) -> None:
        return None


class MemoryLedgerClient:
    def __init__(self) -> None:
        self._ledgers: dict[int, _Ledger] = {}
        self._ids = itertools.count(1)

    async def create_ledger(self, ensemble_size: int, write_quorum: int, ack_quorum: int) -> MemoryWriter:
        lid = next(self._ids)
        info = LedgerInfo(lid, ("mem",) * ensemble_size, write_quorum, ack_quorum, LedgerState.OPEN)
        self._ledgers[lid] = _Ledger(info)
        return MemoryWriter(self._ledgers[lid])

    async def open_ledger(self, ledger_id: int, recover: bool = True) -> MemoryReader:
        ledger = self._ledgers.get(ledger_id)
        if ledger is None:
            raise NoSuchLedger(str(ledger_id))
        if recover and ledger.info.state != LedgerState.CLOSED:
            ledger.fenced = True
            ledger.info = replace(ledger.info, state=LedgerState.CLOSED, last_entry_id=len(ledger.entries) - 1)
        return MemoryReader(ledger)

    async def delete_ledger(self, ledger_id: int) -> None:
        self._ledgers.pop(ledger_id, None)

    async def ledger_info(self, ledger_id: int) -> LedgerInfo | None:
        ledger = self._ledgers.get(ledger_id)
        return ledger.info if ledger else None

    async def close(self) -> None:
        return None
