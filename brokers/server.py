"""The Kafka listener: frames in, handler calls, responses out in request order per connection.

Requests on one connection take effect in the order sent and are answered in that order: a request other
than Produce starts once every earlier request on the connection is complete, as in Kafka. Consecutive
Produce requests overlap (pipelining): each hands its entries to the logs in arrival order
(``RequestContext.after``), then awaits durability concurrently; a produce waits for earlier non-produce
requests. Back-pressure (brokers/connection.py): no frame is read while too many requests are unanswered or
too many response bytes wait to be written; fetches take their memory from a broker-wide budget
(brokers/response_memory.py), given back once written or when the connection closes.
A malformed frame, an unknown API or an unsupported version closes only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from functools import cache
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from brokers import response_memory
from brokers.broker import Broker
from brokers.codec.chain import BufferChain
from brokers.codec.frame import FrameDecoder, FrameError, RequestHead, encode_response, peek_request_head
from brokers.codec.request_check import RequestCheckError, check_request
from brokers.connection import Connection, ConnectionLimits, Request
from brokers.handlers import api_versions
from brokers.handlers.base import RequestContext
from brokers.handlers.registry import HANDLERS
from brokers.listener import Listener
from brokers.memory import IdleTrimmer, Trimmer
from brokers.observability import requests as request_metrics
from brokers.observability import traffic
from brokers.observability.loop_lag import LoopLagSampler
from brokers.response_memory import RequestMemory, ResponseMemory
from brokers.security import connection as connection_auth
from brokers.security.authenticator import AuthRefused
from brokers.security.credentials import CredentialStore
from brokers.security.listeners import ListenerSpec
from brokers.security.principal import ANONYMOUS
from brokers.security.tls import ReloadingContext, TlsFiles

log = logging.getLogger(__name__)
API_VERSIONS = 18
PRODUCE = 0
FETCH = 1
_READ_CHUNK = 1 << 18
_CANCEL_WHEN_STARTED = frozenset({FETCH})
"""Requests cancelled mid-way when their connection closes: reads only (a fetch may hold much memory and wait
long). Others that started complete, as in Kafka, and their answers are dropped."""


class CloseConnection(Exception):
    """The request cannot be answered; the connection is closed after earlier responses are sent."""


@cache
def _request_reader(api_key: int, version: int) -> tuple[Any, Any]:
    """kio readers of one API version's request header and body (kio resolves classes by import path)."""
    request_cls = load_request_schema(api_key, version)
    return entity_reader(request_cls.__header_schema__), entity_reader(request_cls)


@cache
def _flexible_response(api_key: int, version: int) -> bool:
    """Whether responses use header v1 (tagged fields); ApiVersions always answers with header v0."""
    if api_key == API_VERSIONS:
        return False
    return bool(load_response_schema(api_key, version).__header_schema__.__flexible__)


def encode_body(body: Any) -> bytes:
    """A response body as one bytes value (for caching)."""
    return b"".join(encode_body_buffers(body))


def encode_body_buffers(body: Any) -> list[bytes | bytearray | memoryview]:
    """A response body as buffers; large fields (fetched batches) are not copied."""
    chain = BufferChain()
    entity_writer(type(body))(chain, body)  # type: ignore[arg-type]  # kio only calls write()
    return chain.buffers()


_process_tasks_owner: KafkaServer | None = None
"""The listener running the per-process tasks (loop-lag sampler, idle trimmer), while one does."""


class KafkaServer(Listener):
    """Accepts Kafka clients on one listener."""

    read_limit = _READ_CHUNK

    def __init__(self, broker: Broker, listener: ListenerSpec | None = None) -> None:
        super().__init__()
        self.broker = broker
        self.listener = listener
        """None: the broker's only, PLAINTEXT, listener; else the named listener (TLS, SASL) it serves."""
        self._credentials = CredentialStore(broker.store, broker.keys)
        self._tls: ReloadingContext | None = None
        if listener is not None and listener.tls:
            self._tls = ReloadingContext(TlsFiles.of(broker.config, sasl=listener.sasl))
            self.ssl_context = self._tls.context
        self.limits = ConnectionLimits.of(broker.config)
        self.response_memory = ResponseMemory(broker.config.fetch_response_memory_bytes)
        self._left_running: set[asyncio.Task[Any]] = set()  # requests of closed connections finishing
        self._trimmer = Trimmer()
        self.idle_trimmer = IdleTrimmer()
        self._idle_trim: asyncio.Task[None] | None = None  # its task, while listening
        self.loop_lag = LoopLagSampler()  # runs while the listener does (tidelog_event_loop_lag_*)

    async def start(self, host: str, port: int) -> int:
        global _process_tasks_owner  # one listener per process runs them
        if self._tls is not None:
            self._tls.start()
        bound = await super().start(host, port)
        if _process_tasks_owner is None:
            # The loop-lag sampler and the idle trimmer are per process: with several listeners
            # (PLAINTEXT and SASL_SSL, say) only the first one started runs them.
            _process_tasks_owner = self
            self.loop_lag.start()
            self._idle_trim = asyncio.create_task(self.idle_trimmer.run(), name="idle-trim")
        return bound

    async def stop(self) -> None:
        global _process_tasks_owner
        if _process_tasks_owner is self:
            _process_tasks_owner = None
            await self.loop_lag.stop()
        task, self._idle_trim = self._idle_trim, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tls is not None:
            await self._tls.stop()
        await super().stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read frames while the connection has room (back-pressure), start each request once the requests
        before it allow (per-connection order), and close on EOF, errors, idleness or a stalled frame."""
        peer = "{}:{}".format(*writer.get_extra_info("peername", ("?", 0))[:2])
        connection_auth.open_connection(self.broker.config, self.listener, self._credentials, writer)
        loop = asyncio.get_running_loop()
        decoder = FrameDecoder(self.broker.config.socket_request_max_bytes)
        conn = Connection(self.limits, self.response_memory, loop.time())
        answers: asyncio.Queue[Request | None] = asyncio.Queue()
        out = asyncio.create_task(self._write_loop(conn, answers, writer, peer))
        frames: deque[bytes] = deque()
        last_produce: asyncio.Future[None] | None = None  # resolves once the last produce appended
        last_other: asyncio.Task[Any] | None = None  # the last non-produce request
        flush = False  # answer what was read before closing
        traffic.opened()
        try:
            while not out.done():
                if not frames:
                    data = await self._read(reader, writer, conn, peer)
                    if not data:
                        writer.transport.abort()  # the client has gone (or was timed out): nothing to flush
                        break
                    frames.extend(decoder.feed(data))
                    conn.read(loop.time(), decoder.buffered > 0)
                    continue
                if conn.full and not await self._wait_for_room(conn, writer, out, peer):
                    break
                frame = frames.popleft()
                head = peek_request_head(frame)
                request = Request(head.api_key, RequestMemory(self.response_memory))
                produced: asyncio.Future[None] | None = None
                after = last_produce
                if head.api_key == PRODUCE:
                    # A produce waits for the non-produce requests before it; produces overlap, appending in order.
                    waits = [last_other] if last_other is not None and not last_other.done() else []
                    produced = last_produce = loop.create_future()
                else:
                    # Anything else waits until every earlier request on the connection is complete.
                    waits = [r.task for r in conn.unanswered if r.task is not None and not r.task.done()]
                request.task = asyncio.create_task(
                    self._handle(conn, request, frame, head, peer, waits, after, produced)
                )
                if head.api_key != PRODUCE:
                    last_other = request.task
                conn.add(request)
                await answers.put(request)
        except FrameError as e:
            log.warning("closing %s: %s", peer, e)
            flush = True
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop() closing the connection: ending normally keeps asyncio from logging a traceback
        finally:
            traffic.closed()
            if flush and not out.done():  # the requests before a bad frame are answered, within a bound
                answers.put_nowait(None)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with asyncio.timeout(self.limits.frame_timeout_s):
                        await out
            out.cancel()
            for unanswered in conn.unanswered:  # the writer will not await these: their outcome is seen here
                if unanswered.task is not None:
                    unanswered.task.add_done_callback(_outcome_seen)
            for task in conn.close(_CANCEL_WHEN_STARTED):
                self._left_running.add(task)
                task.add_done_callback(self._left_running.discard)
            frames.clear()
            del decoder  # may hold most of a big frame; exceptions below can keep this frame alive in a cycle
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await out
            writer.close()  # sends what is buffered (earlier answers before a refused request), then closes
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(self.limits.frame_timeout_s):
                    await writer.wait_closed()
            writer.transport.abort()  # a client that takes none of it does not keep the buffer alive
            self._trimmer.after_release(conn.peak_backlog, loop.time())  # freed memory back to the system

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection, peer: str
    ) -> bytes:
        """The next bytes from the client; b"" at EOF and when the connection is to be closed for idleness
        or for a frame that does not arrive whole in time."""
        loop = asyncio.get_running_loop()
        while True:
            deadline, why = conn.read_deadline(loop.time())
            try:
                async with asyncio.timeout_at(deadline):
                    return await reader.read(_READ_CHUNK)
            except TimeoutError:
                pass
            now = loop.time()
            if why == "frame":
                log.info("closing %s: a request frame did not arrive whole within %.1fs", peer,
                         self.limits.frame_timeout_s)
                writer.transport.abort()
                return b""
            if why == "idle" and conn.idle(now, _write_buffer_size(writer)):
                what = "takes no responses" if conn.unanswered else "idle"
                log.info("closing %s: %s for %.1fs", peer, what, self.limits.idle_s)
                writer.transport.abort()  # as Kafka does: no flushing of answers nobody takes
                return b""

    async def _wait_for_room(
        self, conn: Connection, writer: asyncio.StreamWriter, out: asyncio.Task[None], peer: str
    ) -> bool:
        """Read no more frames until the connection has room; False to close it (the writer ended, or the
        client takes no answers for connections.max.idle.ms while no request is being handled)."""
        loop = asyncio.get_running_loop()
        while conn.full and not out.done():
            try:
                async with asyncio.timeout_at(conn.wait_deadline(loop.time())):
                    await conn.progress()
            except TimeoutError:
                if conn.idle(loop.time(), _write_buffer_size(writer)):
                    log.info("closing %s: takes no responses for %.1fs", peer, self.limits.idle_s)
                    writer.transport.abort()
                    return False
        conn.resumed(loop.time())
        return not out.done()

    async def _write_loop(
        self, conn: Connection, answers: asyncio.Queue[Request | None], writer: asyncio.StreamWriter, peer: str
    ) -> None:
        """Write the answers in request order; each one's memory is released once written."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                request = await answers.get()
                if request is None or request.task is None:
                    return
                try:
                    await request.task
                except CloseConnection as e:
                    log.warning("closing %s: %s", peer, e)
                    writer.close()
                    return
                except Exception:
                    log.exception("answering a request from %s failed; closing", peer)
                    writer.close()
                    return
                if request.response is not None:
                    writer.writelines(request.response)
                    request.response = None
                    await writer.drain()
                conn.written(request, loop.time())
                if _auth_failed():
                    log.info("closing %s: SASL authentication failed", peer)
                    delay_s = self.broker.config.connection_failed_authentication_delay_ms / 1000
                    await _flush_then_close(writer, self.limits.frame_timeout_s, delay_s)
                    return
        finally:
            conn.wake()  # the reader may be paused waiting for room: the connection is ending

    async def _handle(
        self,
        conn: Connection,
        request: Request,
        frame: bytes,
        head: RequestHead,
        peer: str,
        waits: list[asyncio.Task[Any]],
        after: asyncio.Future[None] | None,
        produced: asyncio.Future[None] | None,
    ) -> None:
        """Wait for the turn of this request, run it, and leave its answer on ``request`` for the writer."""
        try:
            if waits:
                await asyncio.wait(waits)
                waits.clear()  # no references to earlier requests' tasks from here on
            while head.api_key != PRODUCE and conn.answers_waiting:
                await conn.progress()  # a client that does not read: start nothing more for it
            if conn.refused:  # the connection closes at that request: later ones take no effect
                raise CloseConnection("an earlier request on the connection was refused")
            response_memory.current.set(request.memory)  # this task's context: what the handler reserves
            request_metrics.current.set(request.timing)  # handlers add their remote waits to it
            conn.started(request)
            response: list[bytes | bytearray | memoryview] | None = None
            try:
                response = await self._dispatch(frame, head, peer, after, produced)
            except CloseConnection:
                conn.refused = True
                raise
            finally:
                conn.finished(request, response, asyncio.get_running_loop().time())
        finally:
            if produced is not None and not produced.done():
                produced.set_result(None)

    async def _dispatch(
        self,
        frame: bytes,
        head: RequestHead,
        peer: str,
        after: asyncio.Future[None] | None,
        produced: asyncio.Future[None] | None,
    ) -> list[bytes | bytearray | memoryview] | None:
        spec = HANDLERS.get(head.api_key)
        if spec is None:
            raise CloseConnection(f"unknown API key {head.api_key}")
        if not spec.min_version <= head.api_version <= spec.max_version:
            if head.api_key == API_VERSIONS:
                return encode_response(head.correlation_id, False, [api_versions.unsupported_version_body()])
            raise CloseConnection(
                f"API {head.api_key} v{head.api_version} unsupported "
                f"(supported v{spec.min_version}-v{spec.max_version})"
            )
        try:  # every length checked against the frame before kio allocates anything (a huge count aborts kio)
            check_request(frame, head.api_key, head.api_version)
        except RequestCheckError as e:
            raise CloseConnection(f"invalid API {head.api_key} v{head.api_version} request: {e}") from None
        except Exception:  # a bug in the check must not reach the write loop: same as a failing handler
            log.exception("checking API %d v%d from %s failed", head.api_key, head.api_version, peer)
            raise CloseConnection("internal error") from None
        auth = connection_auth.current.get()
        if auth is not None:
            try:
                auth.admit(head.api_key, asyncio.get_running_loop().time())
            except AuthRefused as e:
                raise CloseConnection(str(e)) from None
        read_header, read_body = _request_reader(head.api_key, head.api_version)
        try:
            header, used = read_header(frame, 0)
            request, _ = read_body(frame, used)
        except Exception as e:  # kio raises assorted errors on malformed bodies
            raise CloseConnection(f"malformed API {head.api_key} v{head.api_version} request: {e!r}") from None
        ctx = RequestContext(
            broker=self.broker,
            api_key=head.api_key,
            api_version=head.api_version,
            correlation_id=head.correlation_id,
            client_id=getattr(header, "client_id", None),
            peer=peer,
            after=after,
            produced=produced,
            principal=auth.principal if auth is not None else ANONYMOUS,
            auth=auth,
            listener=self.listener,
        )
        try:
            response = await spec.handle(ctx, request)
        except CloseConnection:
            raise
        except Exception:
            log.exception("API %d v%d from %s failed", head.api_key, head.api_version, peer)
            raise CloseConnection("internal error") from None
        if response is None:
            return None
        if not isinstance(response, bytes):
            request_metrics.count_errors(head.api_key, response)
        flexible = _flexible_response(head.api_key, head.api_version)
        if isinstance(response, bytes):  # a cached body
            return encode_response(head.correlation_id, flexible, [response])
        return encode_response(head.correlation_id, flexible, encode_body_buffers(response))



def _outcome_seen(task: asyncio.Task[Any]) -> None:
    """Read the outcome of a request whose connection closed before its answer was written, so asyncio does
    not log "Task exception was never retrieved" with a traceback for it (the fuzz suite found one per
    refused frame pipelined behind another). CloseConnection is expected there; anything else is logged."""
    if task.cancelled():
        return
    e = task.exception()
    if e is not None and not isinstance(e, CloseConnection):
        log.error("a request of a closed connection failed", exc_info=e)


def _auth_failed() -> bool:
    """Whether this connection's SASL exchange failed: it closes once that answer is written."""
    auth = connection_auth.current.get()
    return auth is not None and auth.closing


async def _flush_then_close(writer: asyncio.StreamWriter, bound_s: float, delay_s: float) -> None:
    """Close ``delay_s`` after the answer written last has left the process (waiting at most ``bound_s`` for
    that): clients that see the close together with the answer may miss the answer (kafka-python does), and
    the delay slows password guessing (Kafka's connection.failed.authentication.delay.ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while _write_buffer_size(writer) and loop.time() < deadline:  # noqa: ASYNC110 - no event for "flushed"
        await asyncio.sleep(0.01)
    await asyncio.sleep(delay_s)
    writer.close()


def _write_buffer_size(writer: asyncio.StreamWriter) -> int:
    """Bytes the transport still has to send (a change means the client is reading)."""
    transport = writer.transport
    return 0 if transport.is_closing() else transport.get_write_buffer_size()
