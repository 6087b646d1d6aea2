"""The Kafka listener: frames in, handler calls, responses out in request order per connection.

Requests on one connection are handled concurrently (pipelining) but answered in order; produce
requests additionally hand their entries to the logs in arrival order (``RequestContext.after``).
A malformed frame, an unknown API or an unsupported version closes only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import cache
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from brokers.broker import Broker
from brokers.codec.chain import BufferChain
from brokers.codec.frame import FrameDecoder, FrameError, RequestHead, encode_response, peek_request_head
from brokers.codec.request_check import RequestCheckError, check_request
from brokers.handlers import api_versions
from brokers.handlers.base import RequestContext
from brokers.handlers.registry import HANDLERS
from brokers.listener import Listener

log = logging.getLogger(__name__)
API_VERSIONS = 18
PRODUCE = 0
_READ_CHUNK = 1 << 18


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


class KafkaServer(Listener):
    """Accepts Kafka clients on one listener."""

    read_limit = _READ_CHUNK

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "{}:{}".format(*writer.get_extra_info("peername", ("?", 0))[:2])
        decoder = FrameDecoder(self.broker.config.socket_request_max_bytes)
        pending: asyncio.Queue[asyncio.Future[list[bytes | bytearray | memoryview] | None] | None] = asyncio.Queue()
        out = asyncio.create_task(self._write_loop(pending, writer, peer))
        last_produce: asyncio.Future[None] | None = None
        try:
            while not out.done():
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                for frame in decoder.feed(data):
                    head = peek_request_head(frame)
                    after = last_produce
                    if head.api_key == PRODUCE:
                        last_produce = asyncio.get_running_loop().create_future()
                    fut = asyncio.ensure_future(self._handle(frame, head, peer, after, last_produce))
                    await pending.put(fut)
        except FrameError as e:
            log.warning("closing %s: %s", peer, e)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop() closing the connection: ending normally keeps asyncio from logging a traceback
        finally:
            await pending.put(None)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await out
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _write_loop(
        self,
        pending: asyncio.Queue[asyncio.Future[list[bytes | bytearray | memoryview] | None] | None],
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        while True:
            fut = await pending.get()
            if fut is None:
                return
            try:
                buffers = await fut
            except CloseConnection as e:
                log.warning("closing %s: %s", peer, e)
                writer.close()
                return
            if buffers is not None:
                writer.writelines(buffers)
                await writer.drain()

    async def _handle(
        self,
        frame: bytes,
        head: RequestHead,
        peer: str,
        after: asyncio.Future[None] | None,
        produced: asyncio.Future[None] | None,
    ) -> list[bytes | bytearray | memoryview] | None:
        try:
            return await self._dispatch(frame, head, peer, after, produced if head.api_key == PRODUCE else None)
        finally:
            if head.api_key == PRODUCE and produced is not None and not produced.done():
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
        flexible = _flexible_response(head.api_key, head.api_version)
        if isinstance(response, bytes):  # a cached body
            return encode_response(head.correlation_id, flexible, [response])
        return encode_response(head.correlation_id, flexible, encode_body_buffers(response))

