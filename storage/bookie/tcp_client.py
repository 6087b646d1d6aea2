"""``TcpBookieClient``: the BookieClient transport to a bookie server over TCP (storage/bookie/wire.py).

One connection per bookie, pipelined: every request gets a request id and any number are in flight;
responses are matched by id, in whatever order they come. The connection is opened on first use and
re-opened after it drops; a failed connect makes calls fail fast with BookieUnavailable until a backoff
(doubling from ``initial_backoff`` to ``max_backoff``) has passed, so a dead bookie costs no waiting.
Every request has a deadline (``request_timeout``); one that passes fails with BookieUnavailable, as do
requests in flight when the connection drops. Read payloads are checked against their CRC-32C here
(CorruptEntry on mismatch), so damage on the bookie's disk or on the way is never returned.

``add_nowait`` on a live connection registers one future under the request id and queues the frame; the
response resolves it directly (``data_received`` turns an error code into the exception), so an add costs
no coroutine or task. Without a live connection it connects first (in a task) or fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from storage.bookie import wire
from storage.bookie.bookie import BookieHealth
from storage.bookie.journal import BookieDiskError
from storage.entry import BookieUnavailable, CorruptEntry, StoredEntry, entry_crc
from storage.ledger.api import LedgerError, LedgerFenced, NoSuchEntry, NoSuchLedger

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_INITIAL_BACKOFF = 0.05
DEFAULT_MAX_BACKOFF = 2.0

_HEALTH_FIELDS = {f.name for f in dataclasses.fields(BookieHealth)}


def wire_error(code: wire.Code, message: str) -> LedgerError:
    """The exception a response's error code stands for."""
    if code is wire.Code.FENCED:
        return LedgerFenced(message)
    if code is wire.Code.NO_SUCH_ENTRY:
        return NoSuchEntry(message)
    if code is wire.Code.NO_SUCH_LEDGER:
        return NoSuchLedger(message)
    if code is wire.Code.CORRUPT:
        return CorruptEntry(message)
    if code is wire.Code.DISK:
        return BookieDiskError(f"{code.name}: {message}")
    return BookieUnavailable(f"{code.name}: {message}")


class _Protocol(asyncio.Protocol):
    """The client side of one connection: decodes responses and hands each to its waiter."""

    def __init__(self, owner: TcpBookieClient, max_frame_size: int) -> None:
        self._owner = owner
        self._decoder = wire.ResponseDecoder(max_frame_size)
        self.transport: asyncio.Transport | None = None
        # request id → (future, deadline, plain): a plain future gets None (or the error), else the Response
        self.pending: dict[int, tuple[asyncio.Future[Any], float, bool]] = {}
        self.lost = False
        self._resume: asyncio.Future[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._out: list[bytes | memoryview] = []  # frames to write at the end of this loop iteration

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # TCP: always an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            responses = self._decoder.feed(data)
        except wire.WireError as exc:
            log.warning("bookie %s sent a bad frame; dropping the connection: %s", self._owner.bookie_id, exc)
            self.abort(BookieUnavailable(f"bookie {self._owner.bookie_id}: bad frame: {exc}"))
            return
        pending = self.pending
        ok = wire.Code.OK
        for response in responses:
            waiter = pending.pop(response.request_id, None)
            if waiter is None:
                continue
            future = waiter[0]
            if future.done():
                continue
            if not waiter[2]:
                future.set_result(response)
            elif response.code == ok:
                future.set_result(None)
            else:
                future.set_exception(
                    wire_error(response.code, f"bookie {self._owner.bookie_id}: {response.message}")
                )

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(BookieUnavailable(f"connection to bookie {self._owner.bookie_id} lost: {exc or 'closed'}"))

    def pause_writing(self) -> None:
        if self._resume is None:
            self._resume = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        resume, self._resume = self._resume, None
        if resume is not None and not resume.done():
            resume.set_result(None)

    async def writable(self) -> None:
        """Wait while the socket's send buffer is over its high-water mark."""
        while self._resume is not None and not self.lost:
            await asyncio.shield(self._resume)

    def send(self, request: wire.Request, deadline: float, plain: bool = False) -> asyncio.Future[Any]:
        """Queue the request; its future gets the Response, or with ``plain`` None for OK and the error
        otherwise. Raises (nothing sent) on values the protocol cannot carry."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.lost or self.transport is None:
            future.set_exception(BookieUnavailable(f"connection to bookie {self._owner.bookie_id} lost"))
            return future
        frame = wire.encode_request(request)  # raises on values the protocol cannot carry: nothing sent
        self.pending[request.request_id] = (future, deadline, plain)
        if not self._out:  # one write (one syscall) for every request made in this loop iteration
            loop.call_soon(self._flush)
        self._out.extend(frame)
        if self._sweeper is None:
            self._schedule_sweep()
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.lost and self.transport is not None:
            self.transport.writelines(out)

    def _schedule_sweep(self) -> None:
        interval = max(0.05, min(1.0, self._owner.request_timeout / 4))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Fail requests past their deadline (one timer per connection, not one per request)."""
        self._sweeper = None
        if self.lost:
            return
        now = time.monotonic()
        expired = [rid for rid, (_, deadline, _) in self.pending.items() if deadline <= now]
        for rid in expired:
            future = self.pending.pop(rid)[0]
            if not future.done():
                future.set_exception(
                    BookieUnavailable(f"bookie {self._owner.bookie_id}: no answer in {self._owner.request_timeout}s")
                )
        if self.pending:
            self._schedule_sweep()

    def _fail_all(self, error: BookieUnavailable) -> None:
        self.lost = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        pending, self.pending = self.pending, {}
        for future, _, _ in pending.values():
            if not future.done():
                future.set_exception(BookieUnavailable(str(error)))
        self.resume_writing()

    def abort(self, error: BookieUnavailable) -> None:
        self._fail_all(error)
        if self.transport is not None:
            self.transport.abort()


class TcpBookieClient:
    """A BookieClient talking to ``host:port`` (see the module docstring). All calls on one event loop."""

    def __init__(
        self,
        bookie_id: str,
        host: str,
        port: int,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        initial_backoff: float = DEFAULT_INITIAL_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_frame_size: int = wire.MAX_FRAME_SIZE,
        read_range_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._id = bookie_id
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._backoff = initial_backoff
        self._retry_at = 0.0
        self._last_connect_error = ""
        self._max_frame = max_frame_size
        self._range_bytes = read_range_bytes
        self._ids = itertools.count(1)
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._closed = False
        self._slow: set[asyncio.Task[None]] = set()  # add_nowait calls waiting for a connection
        self.connects = 0  # connections opened so far (tests and metrics)

    @property
    def bookie_id(self) -> str:
        return self._id

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.lost

    def __repr__(self) -> str:
        return f"TcpBookieClient({self._id!r}, {self.host}:{self.port})"

    # --- the connection -------------------------------------------------------------------------
    async def _connection(self) -> _Protocol:
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        if self._closed:
            raise BookieUnavailable(f"client of bookie {self._id} is closed")
        if self._connecting is None:
            now = time.monotonic()
            if now < self._retry_at:
                raise BookieUnavailable(
                    f"bookie {self._id} at {self.host}:{self.port} unreachable ({self._last_connect_error}); "
                    f"retrying in {self._retry_at - now:.2f}s"
                )
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self, self._max_frame), self.host, self.port),
                    self.connect_timeout,
                )
            except (TimeoutError, OSError) as exc:
                self._last_connect_error = str(exc) or type(exc).__name__
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, self._max_backoff)
                raise BookieUnavailable(
                    f"cannot connect to bookie {self._id} at {self.host}:{self.port}: {self._last_connect_error}"
                ) from None
            if self._closed:
                proto.abort(BookieUnavailable("client closed"))
                raise BookieUnavailable(f"client of bookie {self._id} is closed")
            self._backoff = self._initial_backoff
            self._retry_at = 0.0
            self._conn = proto
            self.connects += 1
            return proto
        finally:
            self._connecting = None

    async def _call(self, request_of: Callable[[int], wire.Request]) -> wire.Response:
        conn = await self._connection()
        request = request_of(next(self._ids))
        future = conn.send(request, time.monotonic() + self.request_timeout)
        await conn.writable()
        response: wire.Response = await future
        if response.code != wire.Code.OK:
            raise wire_error(response.code, f"bookie {self._id}: {response.message}")
        return response

    def _stored(self, entry: wire.WireEntry) -> StoredEntry:
        if entry_crc(entry.payload) != entry.crc:
            raise CorruptEntry(f"bookie {self._id}: entry {entry.entry_id} failed its CRC-32C in transit")
        return StoredEntry(entry.entry_id, entry.ledger_length, bytes(entry.payload))

    # --- BookieClient ---------------------------------------------------------------------------
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
        await self.add_nowait(ledger_id, entry_id, lac, ledger_length, payload, crc, recovery)

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
        conn = self._conn
        if conn is not None and not conn.lost:
            request = wire.AddRequest(next(self._ids), ledger_id, entry_id, lac, ledger_length, crc, recovery, payload)
            try:
                return conn.send(request, time.monotonic() + self.request_timeout, plain=True)
            except Exception as exc:  # a value the protocol cannot carry: nothing was sent
                return self._failed(exc)
        # no live connection: connect (or fail fast within the backoff), then send
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def connect_then_add() -> None:
            try:
                await self._call(
                    lambda rid: wire.AddRequest(rid, ledger_id, entry_id, lac, ledger_length, crc, recovery, payload)
                )
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(None)

        task = asyncio.ensure_future(connect_then_add())
        self._slow.add(task)
        task.add_done_callback(self._slow.discard)
        return done

    @staticmethod
    def _failed(exc: BaseException) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_exception(exc)
        return future

    async def read(self, ledger_id: int, entry_id: int) -> StoredEntry:
        response = await self._call(lambda rid: wire.ReadRequest(rid, ledger_id, entry_id))
        if len(response.entries) != 1 or response.entries[0].entry_id != entry_id:
            raise CorruptEntry(f"bookie {self._id} answered a read of entry {entry_id} with the wrong entries")
        return self._stored(response.entries[0])

    async def read_range(self, ledger_id: int, first: int, last: int) -> list[StoredEntry]:
        response = await self._call(
            lambda rid: wire.ReadRangeRequest(rid, ledger_id, first, last, self._range_bytes)
        )
        if not response.entries:
            raise NoSuchEntry(f"bookie {self._id} returned no entries from {ledger_id}:{first}")
        out: list[StoredEntry] = []
        for entry in response.entries:
            try:
                out.append(self._stored(entry))
            except CorruptEntry:
                if not out:
                    raise
                break  # what came before is good: return it, the reader asks elsewhere for the rest
        return out

    async def read_lac(self, ledger_id: int) -> int:
        return (await self._call(lambda rid: wire.ReadLacRequest(rid, ledger_id))).lac

    async def fence(self, ledger_id: int) -> int:
        return (await self._call(lambda rid: wire.FenceRequest(rid, ledger_id))).lac

    async def delete_ledger(self, ledger_id: int) -> None:
        await self._call(lambda rid: wire.DeleteLedgerRequest(rid, ledger_id))

    async def health(self) -> BookieHealth:
        report = (await self._call(wire.HealthRequest)).health or {}
        fields = {k: v for k, v in report.items() if k in _HEALTH_FIELDS}
        try:
            return BookieHealth(**fields)
        except TypeError as exc:
            raise BookieUnavailable(f"bookie {self._id}: unusable health report {report!r}") from exc

    def disconnect(self) -> None:
        """Drop the current connection (requests in flight fail); the next call reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort(BookieUnavailable(f"connection to bookie {self._id} dropped"))

    async def close(self) -> None:
        """Close the connection; requests in flight and later calls fail with BookieUnavailable."""
        self._closed = True
        connecting = self._connecting
        if connecting is not None:
            with contextlib.suppress(Exception):
                await connecting
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort(BookieUnavailable(f"client of bookie {self._id} is closed"))
