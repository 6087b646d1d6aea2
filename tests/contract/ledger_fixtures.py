"""Fixtures of the ledger-client contract suite (imported by test_ledger_client.py).

* ``ledger_env``    — one fresh ledger world per test, for every kind in LEDGER_KINDS: a metadata store,
                      bookies, and a QuorumLedgerClient over them (``env.client``).
* ``ledger_client`` — ``ledger_env.client``.
* ``rack_env``      — six bookies in three racks (RACKS), in-process and over TCP, plus a rack-aware client
                      (``env.rack_client``, RackAwarePlacement enforcing two racks per write set). Over TCP
                      each bookie registers its address and rack in the metadata store and a BookieWatcher
                      feeds the rack-aware client, as in a cluster; in-process the racks are given to it.

Kinds ``local-*`` reach in-process bookies through ``LocalBookieClient``; kinds ``tcp-*`` serve each bookie
with a ``BookieServer`` on a real socket on 127.0.0.1 and reach it through ``TcpBookieClient`` (every
ledger client made by ``new_client`` gets connections of its own, as another broker would).

Every bookie transport of the first client is wrapped in a ``ChaosBookieClient`` so tests can make a writer
"die" with entries in flight. To add an implementation: add its kind to LEDGER_KINDS and build its bookies
and transports in ``_open_env``; ``corrupt`` needs a way to damage a stored entry.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from metadata.embedded import EmbeddedMetadataStore  # noqa: E402
from metadata.keys import Keys  # noqa: E402
from storage.bookie.bookie import Bookie, BookieHealth  # noqa: E402
from storage.bookie.protocol import BookieClient, LocalBookieClient  # noqa: E402
from storage.bookie.registry import BookieAddress, BookieRegistration, BookieWatcher  # noqa: E402
from storage.bookie.server import BookieServer  # noqa: E402
from storage.bookie.tcp_client import TcpBookieClient  # noqa: E402
from storage.entry import BookieUnavailable, StoredEntry  # noqa: E402
from storage.ledger.client import QuorumLedgerClient  # noqa: E402
from storage.ledger.placement import RackAwarePlacement  # noqa: E402

# kind → (number of bookies, ensemble, write quorum, ack quorum)
LEDGER_KINDS: dict[str, tuple[int, int, int, int]] = {
    "local-1": (1, 1, 1, 1),
    "local-3": (3, 3, 3, 2),
    "local-3-striped": (3, 3, 2, 2),  # E > Qw: consecutive entries on different bookie pairs
    "tcp-1": (1, 1, 1, 1),
    "tcp-3": (3, 3, 3, 2),
    "tcp-3-striped": (3, 3, 2, 2),
}
RACK_KINDS = {"local-rack": (6, 3, 2, 2), "tcp-rack": (6, 3, 2, 2)}  # rack_env only
WAIT = 30.0
# rack_env: bookie id → rack (uneven on purpose: 3 + 2 + 1)
RACKS = {
    "bookie-0": "rack-a",
    "bookie-1": "rack-a",
    "bookie-2": "rack-a",
    "bookie-3": "rack-b",
    "bookie-4": "rack-b",
    "bookie-5": "rack-c",
}


class ChaosBookieClient:
    """A BookieClient wrapper that can stop acks (``hold_acks_from``: the add is stored but its answer
    never comes back) or stop adds (``drop_adds``: entry id → never delivered, never answered).
    ``release`` fails every held call with BookieUnavailable. Recovery adds are never held or dropped.
    While neither is set, ``add_nowait`` is the inner transport's own (the writer's real hot path)."""

    def __init__(self, inner: BookieClient) -> None:
        self.inner = inner
        self.hold_acks_from: int | None = None
        self.drop_adds: Callable[[int], bool] | None = None
        self._released = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def bookie_id(self) -> str:
        return self.inner.bookie_id

    async def _hang(self) -> None:
        await self._released.wait()
        raise BookieUnavailable(f"{self.bookie_id}: connection lost")

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
        if not recovery and self.drop_adds is not None and self.drop_adds(entry_id):
            await self._hang()
        await self.inner.add(ledger_id, entry_id, lac, ledger_length, payload, crc, recovery)
        if not recovery and self.hold_acks_from is not None and entry_id >= self.hold_acks_from:
            await self._hang()

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
        if recovery or (self.drop_adds is None and self.hold_acks_from is None):
            return self.inner.add_nowait(ledger_id, entry_id, lac, ledger_length, payload, crc, recovery)
        task = asyncio.ensure_future(self.add(ledger_id, entry_id, lac, ledger_length, payload, crc, recovery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def read(self, ledger_id: int, entry_id: int) -> StoredEntry:
        return await self.inner.read(ledger_id, entry_id)

    async def read_range(self, ledger_id: int, first: int, last: int) -> list[StoredEntry]:
        return await self.inner.read_range(ledger_id, first, last)

    async def read_lac(self, ledger_id: int) -> int:
        return await self.inner.read_lac(ledger_id)

    async def fence(self, ledger_id: int) -> int:
        return await self.inner.fence(ledger_id)

    async def delete_ledger(self, ledger_id: int) -> None:
        await self.inner.delete_ledger(ledger_id)

    async def health(self) -> BookieHealth:
        return await self.inner.health()

    async def close(self) -> None:
        self.release()
        await self.inner.close()

    def release(self) -> None:
        self._released.set()


@dataclass
class LedgerEnv:
    """One test's ledger world."""

    kind: str
    store: EmbeddedMetadataStore
    keys: Keys
    bookies: list[Bookie]
    transports: list[ChaosBookieClient]
    quorum: tuple[int, int, int]  # (ensemble, write quorum, ack quorum) this kind runs with
    servers: list[BookieServer] = field(default_factory=list)  # tcp kinds: one per bookie
    clients: list[QuorumLedgerClient] = field(default_factory=list)
    extra_transports: list[BookieClient] = field(default_factory=list)
    registrations: list[BookieRegistration] = field(default_factory=list)
    watchers: list[BookieWatcher] = field(default_factory=list)
    rack_client: QuorumLedgerClient | None = None  # rack_env: the rack-aware client

    @property
    def client(self) -> QuorumLedgerClient:
        return self.clients[0]

    def new_client(self) -> QuorumLedgerClient:
        """Another client over the same metadata and bookies (think: another broker)."""
        transports: dict[str, BookieClient] = {t.bookie_id: t for t in self.transports}
        if self.servers and self.clients:  # over TCP, another broker has connections of its own
            for server in self.servers:
                host, port = server.address
                own = TcpBookieClient(server.bookie.bookie_id, host, port)
                self.extra_transports.append(own)
                transports[own.bookie_id] = own
        client = QuorumLedgerClient(self.store, self.keys, transports)
        self.clients.append(client)
        return client

    def transport(self, bookie_id: str) -> ChaosBookieClient:
        return next(t for t in self.transports if t.bookie_id == bookie_id)

    async def wait_stored(self, bookie_id: str, ledger_id: int, entry_id: int) -> tuple[Path, int, int]:
        """Wait until the bookie has stored the entry; its (journal file, offset, size).

        A writer confirms at the ack quorum, before the rest of the write set answers, so an entry may
        still be on its way to a bookie after its ledger is closed.
        """
        bookie = next(b for b in self.bookies if b.bookie_id == bookie_id)
        async with asyncio.timeout(WAIT):  # hang guard: the add is in flight and lands
            while (where := bookie.entry_location(ledger_id, entry_id)) is None:
                await asyncio.sleep(0.005)
        return where

    async def corrupt(self, bookie_id: str, ledger_id: int, entry_id: int) -> None:
        """Flip a byte of the stored entry on one bookie (on disk, as bit rot would), once it is stored."""
        path, offset, size = await self.wait_stored(bookie_id, ledger_id, entry_id)
        assert size > 0
        fd = os.open(path, os.O_RDWR)
        try:
            byte = os.pread(fd, 1, offset + size // 2)
            os.pwrite(fd, bytes([byte[0] ^ 0xFF]), offset + size // 2)
        finally:
            os.close(fd)

    async def close(self) -> None:
        for transport in self.transports:
            transport.release()
        await asyncio.sleep(0)
        for client in self.clients:
            await client.close()
        for watcher in self.watchers:
            await watcher.stop()
        for registration in self.registrations:
            await registration.stop()
        for transport in self.transports:
            await transport.close()
        for extra in self.extra_transports:
            await extra.close()
        for server in self.servers:
            await server.stop()
        for bookie in self.bookies:
            await bookie.close()
        await self.store.close()


async def _open_env(kind: str, tmp_path: Path) -> LedgerEnv:
    count, ensemble, write_quorum, ack_quorum = LEDGER_KINDS.get(kind) or RACK_KINDS[kind]
    store = await EmbeddedMetadataStore.open(None)
    bookies = [await Bookie.open(tmp_path / f"bookie-{i}", bookie_id=f"bookie-{i}") for i in range(count)]
    servers: list[BookieServer] = []
    inner: list[BookieClient] = []
    if kind.startswith("tcp"):
        for bookie in bookies:
            server = BookieServer(bookie)
            host, port = await server.start("127.0.0.1", 0)
            servers.append(server)
            inner.append(TcpBookieClient(bookie.bookie_id, host, port))
    else:
        inner = [LocalBookieClient(b) for b in bookies]
    transports = [ChaosBookieClient(t) for t in inner]
    env = LedgerEnv(kind, store, Keys("test"), bookies, transports, (ensemble, write_quorum, ack_quorum), servers)
    env.new_client()
    return env


async def _open_rack_env(transport: str, tmp_path: Path) -> LedgerEnv:
    """Six bookies in RACKS' racks, E=3 Qw=2 Qa=2; ``rack_client`` learns the racks (see the module doc)."""
    env = await _open_env(f"{transport}-rack", tmp_path)
    placement = RackAwarePlacement(enforce_min_racks=True)
    if transport == "tcp":
        rack_client = QuorumLedgerClient(env.store, env.keys, {}, placement=placement)
        for server in env.servers:
            host, port = server.address
            address = BookieAddress(server.bookie.bookie_id, host, port, RACKS[server.bookie.bookie_id])
            registration = BookieRegistration(env.store, env.keys, address)
            await registration.start()
            env.registrations.append(registration)
        watcher = BookieWatcher(env.store, env.keys, rack_client)
        env.watchers.append(watcher)
        await watcher.start()
        async with asyncio.timeout(WAIT):  # hang guard: every registration is already in the store
            await watcher.wait_for(len(RACKS))
    else:
        transports: dict[str, BookieClient] = {t.bookie_id: t.inner for t in env.transports}
        rack_client = QuorumLedgerClient(env.store, env.keys, transports, placement=placement, racks=RACKS)
    env.clients.append(rack_client)
    env.rack_client = rack_client
    return env


@pytest_asyncio.fixture(params=["local", "tcp"])
async def rack_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerEnv]:
    env = await _open_rack_env(str(request.param), tmp_path)
    try:
        yield env
    finally:
        await env.close()


@pytest_asyncio.fixture(params=list(LEDGER_KINDS))
async def ledger_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerEnv]:
    env = await _open_env(str(request.param), tmp_path)
    try:
        yield env
    finally:
        await env.close()


@pytest.fixture
def ledger_client(ledger_env: LedgerEnv) -> QuorumLedgerClient:
    return ledger_env.client
