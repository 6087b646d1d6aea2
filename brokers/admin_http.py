"""The admin HTTP endpoint (``admin.listen``, ``tidelog run --admin HOST:PORT``): a small HTTP/1.1 server.

``GET /metrics``: the process's Prometheus registry (brokers/observability/, storage/metrics.py) and the broker's
snapshot series (brokers/metrics.py), in the Prometheus text format.
``GET /v1/offload[?topic=NAME]``: offload backlog and progress as JSON (what ``tidelog offload status`` prints).
``GET /healthz``: 200 while the process runs (liveness). ``GET /readyz``: 200 while the broker serves (its
Kafka listener is up, metadata is reachable and, in a cluster, its membership lease is alive), else 503 with a
JSON reason (readiness: take it out of a load balancer, don't restart it).

One request per connection (answers carry ``Connection: close``); HEAD is answered like GET without a body.
Bad input gets a status and the connection closed, nothing else: a malformed request line 400, an
unsupported HTTP version 505, a request line past ``MAX_LINE`` 414, headers past ``MAX_HEAD`` (or
``MAX_HEADERS`` lines) 431, a method other than GET/HEAD 405, an unknown path 404; a client that does not
send its request head within ``HEAD_TIMEOUT`` gets 408; past ``MAX_CONNECTIONS`` at once, 503. Answers are
written under ``WRITE_TIMEOUT``. The server runs on the broker's event loop and only reads figures already
in memory, so it neither blocks nor changes anything the Kafka listener does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from brokers.listener import Listener
from brokers.metrics import CONTENT_TYPE, BrokerFigures, SnapshotCollector, exposition, offload_status

log = logging.getLogger(__name__)

MAX_LINE = 8192
MAX_HEAD = 16384
MAX_HEADERS = 100
HEAD_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
MAX_CONNECTIONS = 64
LINGER_S = 1.0
LINGER_BYTES = 1 << 20
JSON_TYPE = "application/json"
_REQUEST_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/(\d)\.(\d)")


@dataclass(frozen=True, slots=True)
class Response:
    """An answer: status, content type and body."""

    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    allow: str | None = None


class BadRequest(Exception):
    """The request head cannot be served; ``status`` says why."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _error(status: HTTPStatus, reason: str, allow: str | None = None) -> Response:
    return Response(status, f"{status.value} {status.phrase}: {reason}\n".encode(), allow=allow)


Readiness = Callable[[], str | None]
"""None when the broker serves, else why not (one line)."""
PATHS = ("/metrics", "/v1/offload", "/healthz", "/readyz")


def _always_ready() -> str | None:
    return None


def route(
    method: str,
    target: str,
    figures: Callable[[], BrokerFigures],
    ready: Readiness = _always_ready,
    registry: CollectorRegistry | None = None,
) -> Response:
    """The answer to one parsed request (``figures`` is called only for a served path). ``registry`` holds the
    broker's snapshot collector (a fresh one over ``figures`` when None)."""
    try:
        url = urlsplit(target)
    except ValueError:
        return _error(HTTPStatus.BAD_REQUEST, "malformed request target")
    if url.path not in PATHS:
        return _error(HTTPStatus.NOT_FOUND, f"no such path {url.path!r}; try {', '.join(PATHS)}")
    if method not in ("GET", "HEAD"):
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed here", allow="GET, HEAD")
    if url.path == "/healthz":
        return Response(HTTPStatus.OK, b"ok\n")
    if url.path == "/readyz":
        reason = ready()
        status = HTTPStatus.OK if reason is None else HTTPStatus.SERVICE_UNAVAILABLE
        answer: dict[str, object] = {"ready": True} if reason is None else {"ready": False, "reason": reason}
        return Response(status, json.dumps(answer).encode() + b"\n", JSON_TYPE)
    if url.path == "/metrics":
        if registry is None:
            registry = _snapshot_registry(figures)
        return Response(HTTPStatus.OK, exposition(registry), CONTENT_TYPE)
    query = parse_qs(url.query)
    topics = query.get("topic", [])
    if len(topics) > 1 or set(query) - {"topic"}:
        return _error(HTTPStatus.BAD_REQUEST, "the only parameter is one topic=NAME")
    body = json.dumps(offload_status(figures(), topics[0] if topics else None), indent=1)
    return Response(HTTPStatus.OK, body.encode() + b"\n", JSON_TYPE)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, target) of the next request, its headers read and dropped; None when the client closed
    before sending anything. Raises BadRequest."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the request line ended early") from None
    except asyncio.LimitOverrunError:
        raise BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG, f"request line longer than {MAX_LINE} bytes") from None
    match = _REQUEST_LINE.fullmatch(line.rstrip(b"\r\n").decode("latin-1"))
    if match is None:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, major = match.group(1), match.group(2), match.group(3)
    if major != "1":
        raise BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.x is served")
    size = count = 0
    while True:
        try:
            header = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "a header line is too long") from None
        except asyncio.IncompleteReadError:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the headers ended early") from None
        if header in (b"\r\n", b"\n"):
            return method, target
        size += len(header)
        count += 1
        if size > MAX_HEAD or count > MAX_HEADERS:
            raise BadRequest(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"headers past {MAX_HEAD} bytes or {MAX_HEADERS} lines"
            )
        if b":" not in header or header[:1] in (b" ", b"\t"):  # no name, or obsolete line folding
            raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")


def encode_response(response: Response, *, head_only: bool = False) -> bytes:
    """The response's bytes: status line, headers (``Connection: close``), body."""
    status = response.status
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if response.allow is not None:
        lines.append(f"Allow: {response.allow}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def _path(target: str) -> str | None:
    try:
        return urlsplit(target).path
    except ValueError:
        return None


def _snapshot_registry(figures: Callable[[], BrokerFigures]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(figures))
    return registry


class _Taken:
    """Metric families collected already (on the event loop), served as they are from a rendering thread."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class AdminServer(Listener):
    """Serves ``/metrics``, ``/v1/offload``, ``/healthz`` and ``/readyz`` from a figures source
    (``metrics.collect`` of the broker) and a readiness check; ``on_stop`` is awaited by ``stop``."""

    read_limit = MAX_LINE

    def __init__(
        self,
        figures: Callable[[], BrokerFigures],
        *,
        head_timeout: float = HEAD_TIMEOUT,
        ready: Readiness = _always_ready,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self._figures = figures
        self._head_timeout = head_timeout
        self._ready = ready
        self._on_stop = on_stop
        self._registry = _snapshot_registry(figures)
        self._extra: list[Collector] = []

    def register(self, collector: Collector) -> None:
        """Serve ``collector``'s series too, beside the snapshot's (brokers/observability/memory.py)."""
        self._registry.register(collector)
        self._extra.append(collector)

    async def stop(self) -> None:
        await super().stop()
        if self._on_stop is not None:
            await self._on_stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        busy = self.connections > MAX_CONNECTIONS
        try:
            response: Response | None
            head_only = False
            if busy:
                response = _error(HTTPStatus.SERVICE_UNAVAILABLE, "too many admin connections")
            else:
                response, head_only = await self._answer(reader)
            if response is not None:
                await self._send(writer, response, head_only=head_only)
                if response.status >= HTTPStatus.BAD_REQUEST:
                    await _linger(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or stop(): nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Response | None, bool]:
        try:
            async with asyncio.timeout(self._head_timeout):
                head = await read_head(reader)
        except TimeoutError:
            return _error(HTTPStatus.REQUEST_TIMEOUT, f"no request within {self._head_timeout:g}s"), False
        except BadRequest as e:
            return _error(e.status, str(e)), False
        if head is None:
            return None, False
        method, target = head
        try:
            if method in ("GET", "HEAD") and _path(target) == "/metrics":
                # The broker's figures are taken here, on the event loop (in memory, quick); rendering them and
                # the process registry as text (tens of ms on a busy broker) runs in a thread, so a scrape
                # does not stall every Kafka connection for that long.
                snapshot = self._figures()
                registry = _snapshot_registry(lambda: snapshot)
                taken = [family for collector in self._extra for family in collector.collect()]
                if taken:
                    registry.register(_Taken(taken))
                answer = await asyncio.to_thread(route, method, target, lambda: snapshot, self._ready, registry)
                return answer, method == "HEAD"
            return route(method, target, self._figures, self._ready, self._registry), method == "HEAD"
        except Exception:
            log.exception("admin request %s %s failed", method, target[:200])
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "see the broker log"), False

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, *, head_only: bool = False) -> None:
        writer.write(encode_response(response, head_only=head_only))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an error answer to a request not read to its end: half-close, then read and drop what the client
    still sends (for up to ``LINGER_S`` or ``LINGER_BYTES``), so closing does not reset the connection before
    the client has read the answer."""
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
    dropped = 0
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_S):
            while dropped < LINGER_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                dropped += len(chunk)
