"""The quorum ledger client: BookKeeper's client over any set of BookieClient transports.

Ledger metadata is one key per ledger (``keys.ledger(id)``), a msgpack map changed only by compare-and-swap
(format in docs/data-formats.md). Ledger ids come from ``keys.counter("ledger_id")`` by compare-and-swap.

Writes: entry ``e`` goes to its write set (``placement.write_set``: positions ``(e + i) mod E``, ``i < Qw``),
carrying the writer's LAC, the ledger length up to ``e`` and the payload's CRC-32C (computed once). It is
confirmed once Qa bookies acked it and every earlier entry is confirmed; many entries are in flight at once.
Each add is one ``BookieClient.add_nowait`` future per bookie whose completion calls back into the entry's
``_Add`` (no task per bookie per entry).
A LedgerFenced answer fails that entry and every later one and makes the writer unusable; an entry that
fewer than Qa bookies can take fails with NotEnoughBookies (so does every later one: they could never be
confirmed in order). Ensemble change is not implemented yet: the caller rolls to a new ledger.

Reads try the write set in order and fall over on any error (CorruptEntry included); when E = Qw every
bookie holds every entry and ranges are read in bulk. Recovery is in ``recovery.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from metadata.api import MetadataStore, VersionConflict
from metadata.keys import Keys
from metadata.models import decode_int, encode_int
from storage.bookie.protocol import BookieClient
from storage.entry import BookieUnavailable, CorruptEntry, StoredEntry, entry_crc
from storage.ledger.api import (
    DiskError,
    LedgerClosed,
    LedgerError,
    LedgerFenced,
    LedgerInfo,
    LedgerState,
    NoSuchEntry,
    NoSuchLedger,
    NotEnoughBookies,
    StorageUnavailable,
)
from storage.ledger.info import decode_ledger_info, encode_ledger_info
from storage.ledger.placement import DEFAULT_RACK, LeastLoadedPlacement, PlacementPolicy, check_quorums
from storage.ledger.recovery import read_entry, read_error, recover_ledger
from storage.metrics import LEDGER_ADD_BYTES, LEDGER_ADD_SECONDS

log = logging.getLogger(__name__)

READ_CHUNK = 64


class _Add:
    """One entry in flight; called back with each bookie's add future when it completes."""

    __slots__ = ("acks", "entry_id", "failed", "failures", "future", "quorum", "sent", "size", "writer")

    def __init__(self, writer: QuorumLedgerWriter, entry_id: int, size: int, future: asyncio.Future[int]) -> None:
        self.writer = writer
        self.entry_id = entry_id
        self.size = size
        self.future = future
        self.acks = 0
        self.failures = 0
        self.quorum = False
        self.failed = False
        self.sent = time.perf_counter()  # for tidelog_ledger_add_seconds

    def __call__(self, done: asyncio.Future[Any]) -> None:
        """One bookie answered this entry's add (``done`` is its add_nowait future)."""
        exc = BookieUnavailable("add cancelled") if done.cancelled() else done.exception()
        writer = self.writer
        if exc is None:
            if self.failed:
                return
            self.acks += 1
            if self.acks == writer._qa:
                self.quorum = True
                LEDGER_ADD_SECONDS.observe(time.perf_counter() - self.sent)
                writer._advance()
        elif isinstance(exc, LedgerFenced):
            writer._fail_from(self.entry_id, LedgerFenced(f"ledger {writer.ledger_id} is fenced: {exc}"))
        else:
            writer._on_failure(self, exc)


class QuorumLedgerWriter:
    """The writer of one OPEN ledger (LedgerWriter). Made by ``QuorumLedgerClient.create_ledger``."""

    def __init__(self, client: QuorumLedgerClient, info: LedgerInfo, version: int) -> None:
        self._client = client
        self._info = info
        self._version = version
        self._ensemble = info.ensemble
        self._e = len(info.ensemble)
        self._qw = info.write_quorum
        self._qa = info.ack_quorum
        self._next = 0
        self._lac = -1
        self._length = 0
        self._confirmed_length = 0
        self._pending: deque[_Add] = deque()
        self._error: LedgerError | None = None
        self._closing = False
        self._closed = False
        self._unplaced = False
        self._close_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()

    @property
    def ledger_id(self) -> int:
        return self._info.ledger_id

    @property
    def info(self) -> LedgerInfo:
        return self._info

    @property
    def last_add_confirmed(self) -> int:
        return self._lac

    @property
    def length(self) -> int:
        return self._length

    def append(self, entry: bytes | memoryview) -> asyncio.Future[int]:
        """Send the entry to its write set; the future resolves with its id once confirmed, in order.

        ``entry`` is referenced, not copied, until every bookie has it: do not change it meanwhile.
        """
        if self._closing:
            raise LedgerClosed(f"ledger {self.ledger_id} is closed")
        if isinstance(self._error, LedgerFenced):
            raise LedgerFenced(str(self._error))
        if self._error is not None:  # an earlier entry failed: nothing later can be confirmed in order
            failed: asyncio.Future[int] = self._loop.create_future()
            failed.set_exception(type(self._error)(str(self._error)))
            return failed
        entry_id = self._next
        self._next += 1
        size = len(entry) if isinstance(entry, bytes) else entry.nbytes
        self._length += size
        LEDGER_ADD_BYTES.inc(size)
        crc = entry_crc(entry)
        add = _Add(self, entry_id, size, self._loop.create_future())
        self._pending.append(add)
        lac, length, ledger_id = self._lac, self._length, self._info.ledger_id
        bookie = self._client.bookie
        for i in range(self._qw):
            bookie_id = self._ensemble[(entry_id + i) % self._e]
            client = bookie(bookie_id)
            if client is None:
                self._on_failure(add, BookieUnavailable(f"bookie {bookie_id} is not live"))
                continue
            try:
                client.add_nowait(ledger_id, entry_id, lac, length, entry, crc).add_done_callback(add)
            except Exception as exc:  # a transport breaking its contract (it should fail the future)
                self._on_failure(add, exc)
        return add.future

    def _on_failure(self, add: _Add, exc: BaseException) -> None:
        add.failures += 1
        if not add.quorum and not add.failed and self._qw - add.failures < self._qa:
            kind = StorageUnavailable if isinstance(exc, DiskError) else NotEnoughBookies
            self._fail_from(
                add.entry_id,
                kind(
                    f"ledger {self.ledger_id} entry {add.entry_id}: fewer than {self._qa} bookies took it "
                    f"(last error: {exc!r})"
                ),
            )

    def _advance(self) -> None:
        pending = self._pending
        while pending and pending[0].quorum:
            add = pending.popleft()
            self._lac = add.entry_id
            self._confirmed_length += add.size
            if not add.future.done():
                add.future.set_result(add.entry_id)

    def _fail_from(self, entry_id: int, error: LedgerError) -> None:
        """Fail ``entry_id`` and every later entry; the writer takes no more appends."""
        if self._error is None or isinstance(error, LedgerFenced):
            self._error = error
        pending = self._pending
        while pending and pending[-1].entry_id >= entry_id:
            add = pending.pop()
            add.failed = True
            if not add.future.done():
                add.future.set_exception(type(error)(str(error)))

    async def close(self) -> int:
        """Wait for the entries in flight, then CAS the metadata to CLOSED; returns the last entry id.

        Raises LedgerFenced if the ledger was fenced or its metadata changed under this writer (a
        recovery closed it), unless that recovery closed it at this writer's own last entry.
        """
        async with self._close_lock:
            if self._closed:
                return self._info.last_entry_id
            self._closing = True
            waiting = [add.future for add in self._pending]
            if waiting:
                await asyncio.gather(*waiting, return_exceptions=True)
            if isinstance(self._error, LedgerFenced):
                if not self._unplaced:
                    self._unplaced = True
                    self._client.unplace(self._ensemble)
                raise LedgerFenced(str(self._error))
            closed = replace(
                self._info, state=LedgerState.CLOSED, last_entry_id=self._lac, length=self._confirmed_length
            )
            try:
                self._version = await self._client.put_info(closed, self._version)
            except VersionConflict:
                current = await self._client.ledger_info(self.ledger_id)
                if current is None or current.state is not LedgerState.CLOSED or current.last_entry_id != self._lac:
                    raise LedgerFenced(
                        f"ledger {self.ledger_id} metadata changed under its writer (recovered elsewhere)"
                    ) from None
                closed = current
            self._info = closed
            self._closed = True
            if not self._unplaced:
                self._unplaced = True
                self._client.unplace(self._ensemble)
            return closed.last_entry_id


class QuorumLedgerReader:
    """Reads one ledger from any replica (LedgerReader). Made by ``QuorumLedgerClient.open_ledger``."""

    def __init__(self, client: QuorumLedgerClient, info: LedgerInfo) -> None:
        self._client = client
        self._info = info
        self._closed = False
        start = info.ledger_id % len(info.ensemble)  # spread bulk reads of different ledgers
        self._order = info.ensemble[start:] + info.ensemble[:start]

    @property
    def ledger_id(self) -> int:
        return self._info.ledger_id

    @property
    def info(self) -> LedgerInfo:
        return self._info

    async def read(self, first: int, last: int) -> list[bytes]:
        if self._closed:
            raise LedgerError(f"reader of ledger {self.ledger_id} is closed")
        if first < 0 or last < first:
            raise ValueError(f"bad entry range {first}..{last}")
        info = self._info
        if info.state is LedgerState.CLOSED and last > info.last_entry_id:
            raise NoSuchEntry(f"ledger {self.ledger_id} is closed at entry {info.last_entry_id}, asked {last}")
        if len(info.ensemble) == info.write_quorum:
            entries = await self._read_bulk(first, last)
        else:
            entries = await self._read_striped(first, last)
        return [e.payload for e in entries]

    async def _read_bulk(self, first: int, last: int) -> list[StoredEntry]:
        """Every bookie has every entry: read ranges, staying on one bookie until it fails."""
        out: list[StoredEntry] = []
        errors: list[BaseException] = []
        pos, idx = first, 0
        while pos <= last:
            if len(errors) >= len(self._order):
                raise read_error(self.ledger_id, pos, errors)
            client = self._client.bookie(self._order[idx % len(self._order)])
            try:
                if client is None:
                    raise BookieUnavailable(f"bookie {self._order[idx % len(self._order)]} is not live")
                got = await client.read_range(self.ledger_id, pos, last)
            except Exception as exc:
                errors.append(exc)
                idx += 1
                continue
            taken = 0
            for entry in got:
                if entry.entry_id != pos or pos > last:
                    break
                out.append(entry)
                pos += 1
                taken += 1
            if taken:
                errors = []
            else:
                errors.append(CorruptEntry(f"bookie answered entries {[e.entry_id for e in got[:3]]}"))
                idx += 1
        return out

    async def _read_striped(self, first: int, last: int) -> list[StoredEntry]:
        out: list[StoredEntry] = []
        for start in range(first, last + 1, READ_CHUNK):
            ids = range(start, min(last, start + READ_CHUNK - 1) + 1)
            results = await asyncio.gather(
                *(read_entry(self._info, self._client.bookie, e) for e in ids), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
                out.append(result)
        return out

    async def read_last_add_confirmed(self) -> int:
        """The last entry of a closed ledger; else the highest LAC the ensemble's bookies report."""
        if self._info.state is not LedgerState.CLOSED:
            current = await self._client.ledger_info(self.ledger_id)
            if current is None:
                raise NoSuchLedger(f"ledger {self.ledger_id} does not exist")
            self._info = current
        if self._info.state is LedgerState.CLOSED:
            return self._info.last_entry_id

        async def lac(bookie_id: str) -> int:
            client = self._client.bookie(bookie_id)
            if client is None:
                raise BookieUnavailable(f"bookie {bookie_id} is not live")
            return await client.read_lac(self.ledger_id)

        results = await asyncio.gather(*(lac(b) for b in self._info.ensemble), return_exceptions=True)
        answers = [r for r in results if not isinstance(r, BaseException)]
        if not answers:
            raise NotEnoughBookies(f"ledger {self.ledger_id}: no bookie answered read_lac: {results}")
        return max(answers)

    async def close(self) -> None:
        self._closed = True


class QuorumLedgerClient:
    """LedgerClient over bookie transports.

    ``bookies`` maps bookie id → BookieClient for the live bookies; new ensembles are chosen among them
    by ``placement`` (default LeastLoadedPlacement) and reads reach only them. Update it with
    ``set_bookies``/``add_bookie``/``remove_bookie``. ``racks`` maps bookie ids to racks (or zones) for
    rack-aware placement; ``add_bookie(client, rack=...)`` and ``set_rack`` update it (the BookieWatcher
    passes each bookie's registered rack). A bookie leaving the live set keeps its rack. The transports
    stay the caller's to close.
    """

    def __init__(
        self,
        store: MetadataStore,
        keys: Keys,
        bookies: Mapping[str, BookieClient],
        *,
        placement: PlacementPolicy | None = None,
        racks: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._bookies: dict[str, BookieClient] = dict(bookies)
        self._placement = placement or LeastLoadedPlacement()
        self._racks: dict[str, str] = dict(racks or {})
        self._load: dict[str, int] = {}
        self._closed = False

    # --- the live set -------------------------------------------------------------------------
    def set_bookies(self, bookies: Mapping[str, BookieClient]) -> None:
        """Replace the live set."""
        self._bookies = dict(bookies)

    def add_bookie(self, client: BookieClient, rack: str | None = None) -> None:
        """Add (or replace) a live bookie; ``rack`` sets its rack (None keeps the one known, if any)."""
        self._bookies[client.bookie_id] = client
        if rack is not None:
            self._racks[client.bookie_id] = rack

    def set_rack(self, bookie_id: str, rack: str) -> None:
        """Record the rack (or zone) of a bookie, for placement."""
        self._racks[bookie_id] = rack

    def rack_of(self, bookie_id: str) -> str:
        """The bookie's rack; DEFAULT_RACK ("") if none is known."""
        return self._racks.get(bookie_id, DEFAULT_RACK)

    @property
    def placement(self) -> PlacementPolicy:
        return self._placement

    def remove_bookie(self, bookie_id: str) -> None:
        self._bookies.pop(bookie_id, None)

    def bookie(self, bookie_id: str) -> BookieClient | None:
        """The transport to a live bookie, or None."""
        return self._bookies.get(bookie_id)

    @property
    def live_bookies(self) -> tuple[str, ...]:
        return tuple(self._bookies)

    def unplace(self, ensemble: tuple[str, ...]) -> None:
        """A ledger on ``ensemble`` stopped taking writes (placement load accounting)."""
        for bookie_id in ensemble:
            if self._load.get(bookie_id, 0) > 0:
                self._load[bookie_id] -= 1

    # --- metadata -----------------------------------------------------------------------------
    async def _get_info(self, ledger_id: int) -> tuple[LedgerInfo, int] | None:
        found = await self._store.get(self._keys.ledger(ledger_id))
        if found is None:
            return None
        return decode_ledger_info(found.value), found.version

    async def ledger_info(self, ledger_id: int) -> LedgerInfo | None:
        got = await self._get_info(ledger_id)
        return None if got is None else got[0]

    async def put_info(self, info: LedgerInfo, expected_version: int) -> int:
        """CAS the ledger's metadata; returns the new version (VersionConflict if it moved)."""
        return await self._store.put(
            self._keys.ledger(info.ledger_id), encode_ledger_info(info), expected_version=expected_version
        )

    async def _allocate_id(self) -> int:
        key = self._keys.counter("ledger_id")
        while True:
            current = await self._store.get(key)
            new_id = 1 if current is None else decode_int(current.value) + 1
            try:
                expected = 0 if current is None else current.version
                await self._store.put(key, encode_int(new_id), expected_version=expected)
            except VersionConflict:
                continue
            return new_id

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError("ledger client is closed")

    # --- LedgerClient -------------------------------------------------------------------------
    async def create_ledger(self, ensemble_size: int, write_quorum: int, ack_quorum: int) -> QuorumLedgerWriter:
        """Allocate an id, place the ensemble among live bookies, write OPEN metadata; the writer."""
        self._check_open()
        check_quorums(ensemble_size, write_quorum, ack_quorum)
        ensemble = self._placement.choose(
            list(self._bookies), ensemble_size, self._load, racks=self._racks, write_quorum=write_quorum
        )
        while True:
            ledger_id = await self._allocate_id()
            info = LedgerInfo(ledger_id, ensemble, write_quorum, ack_quorum, LedgerState.OPEN)
            try:
                version = await self.put_info(info, 0)
            except VersionConflict:  # the id is taken (a counter restored from an old backup): next
                log.warning("ledger id %d already in use; allocating another", ledger_id)
                continue
            break
        for bookie_id in ensemble:
            self._load[bookie_id] = self._load.get(bookie_id, 0) + 1
        return QuorumLedgerWriter(self, info, version)

    async def open_ledger(self, ledger_id: int, recover: bool = True) -> QuorumLedgerReader:
        """A reader; with ``recover`` an unclosed ledger is first fenced, recovered and closed."""
        self._check_open()
        while True:
            got = await self._get_info(ledger_id)
            if got is None:
                raise NoSuchLedger(f"ledger {ledger_id} does not exist")
            info, version = got
            if info.state is LedgerState.CLOSED or not recover:
                return QuorumLedgerReader(self, info)
            try:
                return await self._recover(info, version)
            except VersionConflict:
                continue  # the metadata moved (another recovery, or the writer closed it): look again

    async def _recover(self, info: LedgerInfo, version: int) -> QuorumLedgerReader:
        recovering = replace(info, state=LedgerState.IN_RECOVERY)
        version = await self.put_info(recovering, version)
        result = await recover_ledger(recovering, self.bookie)
        closed = replace(
            recovering, state=LedgerState.CLOSED, last_entry_id=result.last_entry_id, length=result.length
        )
        await self.put_info(closed, version)
        log.info(
            "recovered ledger %d: LAC %d, last entry %d (%d re-replicated), %d bytes",
            info.ledger_id, result.fenced_lac, result.last_entry_id, result.recovered, result.length,
        )
        return QuorumLedgerReader(self, closed)

    async def delete_ledger(self, ledger_id: int) -> None:
        """Delete the ledger on its bookies, then its metadata. A bookie that cannot be reached keeps
        its copy (to be collected by bookie GC, which compares against metadata)."""
        self._check_open()
        got = await self._get_info(ledger_id)
        if got is None:
            raise NoSuchLedger(f"ledger {ledger_id} does not exist")
        info, _ = got

        async def delete(bookie_id: str) -> None:
            client = self.bookie(bookie_id)
            if client is None:
                raise BookieUnavailable(f"bookie {bookie_id} is not live")
            await client.delete_ledger(ledger_id)

        results = await asyncio.gather(*(delete(b) for b in info.ensemble), return_exceptions=True)
        for bookie_id, result in zip(info.ensemble, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("ledger %d: delete on bookie %s failed: %r", ledger_id, bookie_id, result)
        await self._store.delete(self._keys.ledger(ledger_id))

    async def close(self) -> None:
        self._closed = True
