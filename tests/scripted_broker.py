"""A scripted Kafka server on 127.0.0.1 for unit tests of the client side (brokers/cli/client.py and its users).

It decodes requests with kio exactly as a broker does and answers what the test tells it to; it is never
evidence that the broker works.
"""

from __future__ import annotations

import asyncio
import datetime
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer

from brokers.codec.frame import FrameDecoder, RequestHead, encode_response, peek_request_head
from brokers.handlers.base import make, response_module

NO_THROTTLE = datetime.timedelta(0)
Respond = Callable[[RequestHead, Any], Awaitable[Any]]


def body_bytes(entity: Any) -> bytes:
    buf = io.BytesIO()
    entity_writer(type(entity))(buf, entity)
    return buf.getvalue()


def api_versions_body(version: int, ranges: dict[int, tuple[int, int]], code: ErrorCode = ErrorCode.none) -> Any:
    mod = response_module(18, version)
    keys = tuple(mod.ApiVersion(api_key=k, min_version=lo, max_version=hi) for k, (lo, hi) in sorted(ranges.items()))
    return make(mod.ApiVersionsResponse, error_code=code, api_keys=keys, throttle_time=NO_THROTTLE)


FULL = {18: (0, 4), 3: (0, 12), 10: (0, 6), 2: (1, 10), 16: (0, 5)}


class ScriptedBroker:
    """A Kafka server on 127.0.0.1 whose answers the test scripts; it decodes requests with kio as a broker would.

    ``respond(head, request)`` returns a kio response, raw body bytes (sent with a v0 header), or None (no answer).
    """

    def __init__(self, respond: Respond | None = None, ranges: dict[int, tuple[int, int]] | None = None) -> None:
        self.respond = respond
        self.ranges = ranges or FULL
        self.seen: list[tuple[RequestHead, Any]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> ScriptedBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        decoder = FrameDecoder(1 << 20)
        while data := await reader.read(1 << 16):
            for frame in decoder.feed(data):
                head = peek_request_head(frame)
                cls = load_request_schema(head.api_key, head.api_version)
                _, used = entity_reader(cls.__header_schema__)(frame, 0)
                request, _ = entity_reader(cls)(frame, used)
                self.seen.append((head, request))
                task = asyncio.create_task(self._answer(head, request, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, head: RequestHead, request: Any, writer: asyncio.StreamWriter) -> None:
        if head.api_key == 18 and (self.respond is None or head.api_version <= self.ranges[18][1]):
            response: Any = api_versions_body(head.api_version, self.ranges)
        elif self.respond is None:
            return
        else:
            response = await self.respond(head, request)
        if response is None:
            return
        if isinstance(response, bytes):
            writer.writelines(encode_response(head.correlation_id, False, [response]))
            return
        schema = load_response_schema(head.api_key, head.api_version)
        flexible = head.api_key != 18 and schema.__header_schema__.__flexible__
        writer.writelines(encode_response(head.correlation_id, flexible, [body_bytes(response)]))

    def requests(self, api_key: int) -> list[tuple[RequestHead, Any]]:
        return [(h, r) for h, r in self.seen if h.api_key == api_key]


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedBroker]]]:
    made: list[ScriptedBroker] = []

    async def start(respond: Respond | None = None, ranges: dict[int, tuple[int, int]] | None = None) -> ScriptedBroker:
        b = await ScriptedBroker(respond, ranges).start()
        made.append(b)
        return b

    yield start
    for b in made:
        await b.stop()


def coordinator_answer(version: int, keys: list[tuple[str, ErrorCode]], port: int) -> Any:
    """A FindCoordinator v4+ response naming node 7 at 127.0.0.1:port for each key."""
    mod = response_module(10, version)
    coords = tuple(
        mod.Coordinator(key=k, node_id=7, host="127.0.0.1", port=port, error_code=c, error_message=None)
        for k, c in keys
    )
    return mod.FindCoordinatorResponse(throttle_time=NO_THROTTLE, coordinators=coords)
