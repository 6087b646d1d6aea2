"""The bookie's TCP server: the wire protocol (storage/bookie/wire.py) in front of a ``Bookie``.

Each connection is pipelined: requests are decoded as they arrive and all run at once, so many adds from
one ledger writer land in one journal group commit; each response goes out as soon as its request is
done, in any order (the client matches them by request id). An add is verified against its CRC-32C
before it is journalled, and answered only once durable. A frame that cannot be decoded closes that
connection only; a request whose fields make no sense gets a BAD_REQUEST answer.

Backpressure: a connection stops being read while its client does not read its responses, or while it
has more than ``max_in_flight`` requests or ``max_in_flight_bytes`` of add payloads outstanding.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable

from storage.bookie import wire
from storage.bookie.bookie import Bookie
from storage.bookie.journal import JournalRecord
from storage.entry import BookieUnavailable, CorruptEntry, StoredEntry, entry_crc
from storage.ledger.api import DiskError, LedgerFenced, NoSuchEntry, NoSuchLedger

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 4096
DEFAULT_MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024
READ_RANGE_MAX_BYTES = 8 * 1024 * 1024


def error_code(exc: BaseException) -> wire.Code:
    """The wire code for an exception raised by the bookie."""
    if isinstance(exc, LedgerFenced):
        return wire.Code.FENCED
    if isinstance(exc, NoSuchEntry):
        return wire.Code.NO_SUCH_ENTRY
    if isinstance(exc, NoSuchLedger):
        return wire.Code.NO_SUCH_LEDGER
    if isinstance(exc, CorruptEntry):
        return wire.Code.CORRUPT
    if isinstance(exc, DiskError):
        return wire.Code.DISK
    if isinstance(exc, BookieUnavailable):
        return wire.Code.UNAVAILABLE
    if isinstance(exc, ValueError):
        return wire.Code.BAD_REQUEST
    return wire.Code.INTERNAL


def _entry(e: StoredEntry) -> wire.WireEntry:
    return wire.WireEntry(e.entry_id, e.ledger_length, entry_crc(e.payload), e.payload)


class _Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: BookieServer) -> None:
        self._server = server
        self._bookie = server.bookie
        self._decoder = wire.RequestDecoder(server.max_frame_size)
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._closed = False
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._reading_paused = False
        self._writing_paused = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._out: list[bytes | memoryview] = []  # responses to write at the end of this loop iteration

    # --- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # TCP: always an asyncio.Transport
        self._peer = str(transport.get_extra_info("peername"))
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        for task in self._tasks:
            task.cancel()  # reads and the like; adds already queued in the journal still complete

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except wire.WireError as exc:
            log.warning(
                "bookie %s: bad frame from %s, closing the connection: %s", self._bookie.bookie_id, self._peer, exc
            )
            self.abort()
            return
        for message in messages:
            if isinstance(message, wire.Response):  # a well-framed request that cannot be served
                self._send(message)
            elif isinstance(message, wire.AddRequest):
                self._add(message)
            else:
                self._spawn(message)
        self._update_reading()

    def eof_received(self) -> bool | None:
        return False  # close our side too: answers still pending are dropped

    # --- requests -------------------------------------------------------------------------------
    def _add(self, req: wire.AddRequest) -> None:
        rid = req.request_id
        if entry_crc(req.payload) != req.crc:
            self._send(
                wire.error_response(
                    rid, wire.Kind.ADD, wire.Code.CORRUPT,
                    f"entry {req.ledger_id}:{req.entry_id} failed its CRC-32C on arrival",
                )
            )  # fmt: skip
            return
        try:
            future = self._bookie.add_nowait(
                req.ledger_id, req.entry_id, req.lac, req.payload,
                ledger_length=req.ledger_length, crc=req.crc, recovery=req.recovery,
            )  # fmt: skip
        except Exception as exc:
            self._send(self._failure(rid, wire.Kind.ADD, exc))
            return
        size = req.payload.nbytes if isinstance(req.payload, memoryview) else len(req.payload)
        self._in_flight += 1
        self._in_flight_bytes += size

        def done(fut: asyncio.Future[JournalRecord]) -> None:
            self._in_flight -= 1
            self._in_flight_bytes -= size
            exc = fut.exception() if not fut.cancelled() else BookieUnavailable("add cancelled")
            if exc is None:
                self._send(wire.Response(rid, wire.Kind.ADD))
            else:
                self._send(self._failure(rid, wire.Kind.ADD, exc))
            self._update_reading()

        future.add_done_callback(done)

    def _spawn(self, req: wire.Request) -> None:
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._serve(req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, req: wire.Request) -> None:
        kind = _KINDS[type(req)]
        try:
            response = await self._run(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = self._failure(req.request_id, kind, exc)
        finally:
            self._in_flight -= 1
        self._send(response)
        self._update_reading()

    def _run(self, req: wire.Request) -> Awaitable[wire.Response]:
        bookie = self._bookie
        rid = req.request_id

        async def read(r: wire.ReadRequest) -> wire.Response:
            entry = await bookie.read_entry(r.ledger_id, r.entry_id)
            return wire.Response(rid, wire.Kind.READ, entries=(_entry(entry),))

        async def read_range(r: wire.ReadRangeRequest) -> wire.Response:
            got = await bookie.read_range(r.ledger_id, r.first, r.last, min(r.max_bytes, READ_RANGE_MAX_BYTES))
            return wire.Response(rid, wire.Kind.READ_RANGE, entries=tuple(_entry(e) for e in got))

        async def read_lac(r: wire.ReadLacRequest) -> wire.Response:
            return wire.Response(rid, wire.Kind.READ_LAC, lac=await bookie.read_lac(r.ledger_id))

        async def fence(r: wire.FenceRequest) -> wire.Response:
            return wire.Response(rid, wire.Kind.FENCE, lac=await bookie.fence(r.ledger_id))

        async def delete(r: wire.DeleteLedgerRequest) -> wire.Response:
            await bookie.delete_ledger(r.ledger_id)
            return wire.Response(rid, wire.Kind.DELETE_LEDGER)

        async def health() -> wire.Response:
            return wire.Response(rid, wire.Kind.HEALTH, health=dataclasses.asdict(await bookie.health()))

        if isinstance(req, wire.ReadRequest):
            return read(req)
        if isinstance(req, wire.ReadRangeRequest):
            return read_range(req)
        if isinstance(req, wire.ReadLacRequest):
            return read_lac(req)
        if isinstance(req, wire.FenceRequest):
            return fence(req)
        if isinstance(req, wire.DeleteLedgerRequest):
            return delete(req)
        return health()

    def _failure(self, rid: int, kind: wire.Kind, exc: BaseException) -> wire.Response:
        code = error_code(exc)
        if code is wire.Code.INTERNAL:
            log.error("bookie %s: %s request %d failed", self._bookie.bookie_id, kind.name, rid, exc_info=exc)
        return wire.error_response(rid, kind, code, str(exc) or type(exc).__name__)

    # --- output and flow control ----------------------------------------------------------------
    def _send(self, response: wire.Response) -> None:
        if self._closed or self._transport is None:
            return
        if not self._out:  # one write (one syscall) for all the answers ready in this loop iteration
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.extend(wire.encode_response(response))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self._closed and self._transport is not None:
            self._transport.writelines(out)

    def _update_reading(self) -> None:
        transport = self._transport
        if self._closed or transport is None:
            return
        server = self._server
        busy = (
            self._writing_paused
            or self._in_flight >= server.max_in_flight
            or self._in_flight_bytes >= server.max_in_flight_bytes
        )
        if busy and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not busy and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


_KINDS: dict[type, wire.Kind] = {
    wire.AddRequest: wire.Kind.ADD,
    wire.ReadRequest: wire.Kind.READ,
    wire.ReadRangeRequest: wire.Kind.READ_RANGE,
    wire.ReadLacRequest: wire.Kind.READ_LAC,
    wire.FenceRequest: wire.Kind.FENCE,
    wire.DeleteLedgerRequest: wire.Kind.DELETE_LEDGER,
    wire.HealthRequest: wire.Kind.HEALTH,
}


class BookieServer:
    """Serves one ``Bookie`` over TCP. ``await start(host, port)``; ``await stop()`` (the bookie stays open)."""

    def __init__(
        self,
        bookie: Bookie,
        *,
        max_frame_size: int = wire.MAX_FRAME_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
    ) -> None:
        self.bookie = bookie
        self.max_frame_size = max_frame_size
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0: any free port); returns the bound (host, port)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)
        sockname = self._server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        return self._address

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("the bookie server is not started")
        return self._address

    def drop_connections(self) -> None:
        """Abort every client connection (tests: a network blip); the listener stays up."""
        for conn in list(self.connections):
            conn.abort()

    async def stop(self) -> None:
        """Stop listening and close every connection (requests still in flight are not answered)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5.0)
        for conn in list(self.connections):
            conn.abort()
