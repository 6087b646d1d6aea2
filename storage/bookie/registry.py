"""Which bookies are alive: registration under a lease, and a watcher keeping a ledger client's live set.

A bookie server puts ``keys.bookie(id)`` bound to a lease (``BookieRegistration``); the value says where
to reach it (format in docs/data-formats.md). If the bookie dies, its lease expires and the key vanishes;
on a clean shutdown it revokes the lease, so the key vanishes at once. If the lease is lost while the
bookie lives (the metadata store was unreachable for a whole ttl), it registers again under a new lease.

``BookieWatcher`` lists the bookies, then follows the prefix: it connects a transport (by default a
``TcpBookieClient``) to each bookie that appears and adds it, with its rack, to a ``QuorumLedgerClient``; when a key
vanishes it removes the bookie and closes the transport; a changed address gets a new transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from metadata.api import EventKind, Lease, MetadataError, MetadataStore, RevisionCompacted
from metadata.keys import Keys
from storage.bookie.protocol import BookieClient
from storage.bookie.tcp_client import TcpBookieClient
from storage.ledger.client import QuorumLedgerClient

log = logging.getLogger(__name__)

REGISTRATION_FORMAT = 1
DEFAULT_LEASE_TTL = 10.0


@dataclass(frozen=True, slots=True)
class BookieAddress:
    """A registered bookie: its id, where clients connect, and its rack (or zone; "" if none)."""

    bookie_id: str
    host: str
    port: int
    rack: str = ""

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            {"v": REGISTRATION_FORMAT, "id": self.bookie_id, "host": self.host, "port": self.port, "rack": self.rack},
            use_bin_type=True,
        )
        return data

    @classmethod
    def decode(cls, data: bytes) -> BookieAddress:
        d: Any = msgpack.unpackb(data, raw=False)
        if not isinstance(d, dict) or d.get("v") != REGISTRATION_FORMAT:
            raise ValueError(f"unknown bookie registration format: {d!r}")
        return cls(str(d["id"]), str(d["host"]), int(d["port"]), str(d.get("rack", "")))


class BookieRegistration:
    """Keeps ``keys.bookie(id)`` registered under a live lease until ``stop``."""

    def __init__(
        self, store: MetadataStore, keys: Keys, address: BookieAddress, *, ttl: float = DEFAULT_LEASE_TTL
    ) -> None:
        self._store = store
        self._keys = keys
        self.address = address
        self._ttl = ttl
        self._lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        self.registrations = 0  # times the key was (re)written

    async def start(self) -> None:
        """Register now (raising if the store refuses), then keep the registration alive."""
        await self._register()
        self._task = asyncio.create_task(self._keep(), name=f"bookie-registration-{self.address.bookie_id}")

    async def _register(self) -> None:
        lease = await self._store.lease(self._ttl)
        try:
            await self._store.put(self._keys.bookie(self.address.bookie_id), self.address.encode(), lease=lease.id)
        except BaseException:
            with contextlib.suppress(Exception):
                await lease.revoke()
            raise
        self._lease = lease
        self.registrations += 1
        log.info("bookie %s registered at %s:%d", self.address.bookie_id, self.address.host, self.address.port)

    async def _keep(self) -> None:
        interval = max(0.05, self._ttl / 5)
        while True:
            await asyncio.sleep(interval)
            lease = self._lease
            if lease is not None and lease.alive:
                continue
            log.warning("bookie %s: registration lease lost; registering again", self.address.bookie_id)
            try:
                await self._register()
            except (MetadataError, OSError) as exc:
                log.warning("bookie %s: registering failed (will retry): %r", self.address.bookie_id, exc)

    async def stop(self) -> None:
        """Stop refreshing and revoke the lease: the registration vanishes at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(MetadataError, OSError):
                await lease.revoke()


Connect = Callable[[BookieAddress], BookieClient]


def tcp_connect(address: BookieAddress) -> BookieClient:
    """The default transport factory: a TcpBookieClient to the registered address."""
    return TcpBookieClient(address.bookie_id, address.host, address.port)


class BookieWatcher:
    """Keeps ``ledgers``' live bookie set equal to the registered bookies (see the module docstring)."""

    def __init__(
        self, store: MetadataStore, keys: Keys, ledgers: QuorumLedgerClient, *, connect: Connect = tcp_connect
    ) -> None:
        self._store = store
        self._keys = keys
        self._ledgers = ledgers
        self._connect = connect
        self._known: dict[str, tuple[BookieAddress, BookieClient]] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def bookies(self) -> dict[str, BookieAddress]:
        """The registered bookies by id, as last seen."""
        return {bookie_id: address for bookie_id, (address, _) in self._known.items()}

    async def start(self) -> None:
        """Take in the bookies registered now, then follow changes in the background."""
        revision = await self._resync()
        self._task = asyncio.create_task(self._follow(revision), name="bookie-watcher")

    async def wait_for(self, count: int) -> None:
        """Wait until at least ``count`` bookies are registered (bound it with ``asyncio.timeout``)."""
        while len(self._known) < count:
            self._changed.clear()
            await self._changed.wait()

    async def _resync(self) -> int:
        """Re-read the whole prefix; returns the revision it reflects at least."""
        revision = await self._store.revision()
        current: dict[str, BookieAddress] = {}
        for item in await self._store.list(self._keys.bookies_prefix()):
            address = self._decode(item.key, item.value)
            if address is not None:
                current[address.bookie_id] = address
        for bookie_id in list(self._known):
            if bookie_id not in current:
                await self._drop(bookie_id)
        for address in current.values():
            await self._put(address)
        return revision

    async def _follow(self, revision: int) -> None:
        prefix = self._keys.bookies_prefix()
        while True:
            try:
                async for event in self._store.watch(prefix, from_revision=revision + 1):
                    revision = event.revision
                    bookie_id = event.key[len(prefix) :]
                    if event.kind is EventKind.DELETE:
                        await self._drop(bookie_id)
                    elif event.value is not None:
                        address = self._decode(event.key, event.value)
                        if address is not None:
                            await self._put(address)
                return  # the store was closed
            except RevisionCompacted:
                log.warning("bookie watch fell behind the store's history; re-reading the bookie list")
            except MetadataError as exc:
                log.warning("bookie watch failed (%r); re-reading the bookie list", exc)
                await asyncio.sleep(0.5)
            try:
                revision = await self._resync()
            except MetadataError as exc:
                log.warning("re-reading the bookie list failed (%r); retrying", exc)
                await asyncio.sleep(0.5)

    @staticmethod
    def _decode(key: str, value: bytes) -> BookieAddress | None:
        try:
            return BookieAddress.decode(value)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            log.warning("ignoring bookie registration %s: %r", key, exc)
            return None

    async def _put(self, address: BookieAddress) -> None:
        known = self._known.get(address.bookie_id)
        if known is not None and known[0] == address:
            return
        if known is not None:
            await self._drop(address.bookie_id)
        client = self._connect(address)
        self._known[address.bookie_id] = (address, client)
        self._ledgers.add_bookie(client, rack=address.rack)
        self._changed.set()
        log.info("bookie %s is live at %s:%d (rack %r)", address.bookie_id, address.host, address.port, address.rack)

    async def _drop(self, bookie_id: str) -> None:
        known = self._known.pop(bookie_id, None)
        if known is None:
            return
        self._ledgers.remove_bookie(bookie_id)
        self._changed.set()
        log.info("bookie %s is gone", bookie_id)
        with contextlib.suppress(Exception):
            await known[1].close()

    async def stop(self) -> None:
        """Stop following and close every transport this watcher opened (the live set is emptied)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for bookie_id in list(self._known):
            await self._drop(bookie_id)
