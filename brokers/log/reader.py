"""Open ledger readers of one partition, kept for reuse (reads never recover: the owner knows its tail)."""

from __future__ import annotations

from storage.ledger.api import LedgerClient, LedgerReader


class LedgerReaders:
    def __init__(self, ledgers: LedgerClient) -> None:
        self._ledgers = ledgers
        self._readers: dict[int, LedgerReader] = {}

    async def get(self, ledger_id: int) -> LedgerReader:
        reader = self._readers.get(ledger_id)
        if reader is None:
            reader = await self._ledgers.open_ledger(ledger_id, recover=False)
            self._readers[ledger_id] = reader
        return reader

    async def drop(self, ledger_id: int) -> None:
        reader = self._readers.pop(ledger_id, None)
        if reader is not None:
            await reader.close()

    async def close(self) -> None:
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            await reader.close()
