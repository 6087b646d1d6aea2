"""The transport between the quorum ledger client and one bookie.

``BookieClient`` is what ``QuorumLedgerClient`` talks to, one per bookie; ``LocalBookieClient`` serves it
from a ``Bookie`` in the same process (embedded mode, tests). The TCP client (length-prefixed msgpack
frames, design §6) implements the same Protocol.

Errors a transport raises: LedgerFenced (add to a fenced ledger), NoSuchEntry, NoSuchLedger (deleted),
CorruptEntry (the stored entry, or the frame carrying it, failed its CRC-32C), BookieUnavailable (closed,
failed, unreachable, timed out). The ledger client treats any other exception like BookieUnavailable.
A transport returns payloads it has checked against their CRC-32C.

``add_nowait`` is the writer's hot path: it sends the add at once and returns a future (no coroutine, no
task), which fails with the errors above; ``add`` awaits it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from storage.bookie.bookie import Bookie, BookieHealth
from storage.entry import StoredEntry

__all__ = ["BookieClient", "BookieHealth", "LocalBookieClient"]


class BookieClient(Protocol):
    """Requests to one bookie (all async; many may be in flight at once)."""

    @property
    def bookie_id(self) -> str: ...

    async def add(
        self,
        ledger_id: int,
        entry_id: int,
        lac: int,
        ledger_length: int,
        payload: bytes | memoryview,
        crc: int,
        recovery: bool = False,
    ) -> None:
        """Store an entry durably; ``lac`` is the writer's last-add-confirmed, ``ledger_length`` the
        ledger's payload bytes up to and including this entry, ``crc`` the payload's CRC-32C."""
        ...

    def add_nowait(
        self,
        ledger_id: int,
        entry_id: int,
        lac: int,
        ledger_length: int,
        payload: bytes | memoryview,
        crc: int,
        recovery: bool = False,
    ) -> asyncio.Future[Any]:
        """``add`` without a coroutine: sends now and returns a future that completes (its result means
        nothing) once the entry is durable on the bookie, or fails with the add's error. Never raises;
        never cancel the future."""
        ...

    async def read(self, ledger_id: int, entry_id: int) -> StoredEntry: ...

    async def read_range(self, ledger_id: int, first: int, last: int) -> list[StoredEntry]:
        """Consecutive entries from ``first`` (at least one, else it raises), possibly fewer than asked."""
        ...

    async def read_lac(self, ledger_id: int) -> int: ...

    async def fence(self, ledger_id: int) -> int:
        """Fence the ledger on this bookie (durably); returns the bookie's LAC for it."""
        ...

    async def delete_ledger(self, ledger_id: int) -> None: ...

    async def health(self) -> BookieHealth: ...

    async def close(self) -> None:
        """Release the transport (the bookie itself stays up)."""
        ...


class LocalBookieClient:
    """A BookieClient calling a Bookie in the same process (no copies, no serialization)."""

    def __init__(self, bookie: Bookie) -> None:
        self._bookie = bookie

    @property
    def bookie_id(self) -> str:
        return self._bookie.bookie_id

    @property
    def bookie(self) -> Bookie:
        return self._bookie

    async def add(
        self,
        ledger_id: int,
        entry_id: int,
        lac: int,
        ledger_length: int,
        payload: bytes | memoryview,
        crc: int,
        recovery: bool = False,
    ) -> None:
        await self._bookie.add_entry(
            ledger_id, entry_id, lac, payload, ledger_length=ledger_length, crc=crc, recovery=recovery
        )

    def add_nowait(
        self,
        ledger_id: int,
        entry_id: int,
        lac: int,
        ledger_length: int,
        payload: bytes | memoryview,
        crc: int,
        recovery: bool = False,
    ) -> asyncio.Future[Any]:
        try:
            return self._bookie.add_nowait(
                ledger_id, entry_id, lac, payload, ledger_length=ledger_length, crc=crc, recovery=recovery
            )
        except Exception as exc:  # refused at once (fenced, deleted, journal closed): fail the future
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def read(self, ledger_id: int, entry_id: int) -> StoredEntry:
        return await self._bookie.read_entry(ledger_id, entry_id)

    async def read_range(self, ledger_id: int, first: int, last: int) -> list[StoredEntry]:
        return await self._bookie.read_range(ledger_id, first, last)

    async def read_lac(self, ledger_id: int) -> int:
        return await self._bookie.read_lac(ledger_id)

    async def fence(self, ledger_id: int) -> int:
        return await self._bookie.fence(ledger_id)

    async def delete_ledger(self, ledger_id: int) -> None:
        await self._bookie.delete_ledger(ledger_id)

    async def health(self) -> BookieHealth:
        return await self._bookie.health()

    async def close(self) -> None:
        return None
