"""A small TCP proxy on 127.0.0.1 that the nemesis uses to cut or slow the links to a bookie.

Each bookie of a ``DevCluster(proxied=True)`` advertises a proxy port instead of its own, so every broker's
connection to it runs through one ``TcpProxy``. ``cut()`` stalls both directions (nothing is forwarded, new
connections are accepted and stall too — a network partition, not a refusal: the broker's timeouts must fire);
``reset()`` closes every current connection; ``delay(s)`` holds each chunk ``s`` seconds; ``heal()`` restores
the link. All proxies of one cluster share one event loop in one daemon thread, so the caller stays blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

HOST = "127.0.0.1"
CHUNK = 65536
T = TypeVar("T")


class TcpProxy:
    """Forwards ``HOST:listen_port`` to ``HOST:target_port``; see the module docstring for the faults."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.delay_s = 0.0
        self._open = asyncio.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.listen_port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset()
        self._open.set()

    def _cut(self) -> None:
        self._open.clear()

    def _heal(self) -> None:
        self.delay_s = 0.0
        self._open.set()

    def _reset(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._open.wait()  # a cut link reads nothing more, so the sender's buffers fill up
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side gone: end both, as a TCP connection through a dead middlebox would


class ProxyRunner:
    """The event loop thread all of a cluster's proxies run on; methods are blocking and thread-safe."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tidelog-proxy", daemon=True)
        self._thread.start()
        self.proxies: list[TcpProxy] = []

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _do(self, fn: Any, *args: Any) -> None:
        async def run() -> None:
            fn(*args)

        self._call(run())

    def add(self, listen_port: int, target_port: int) -> TcpProxy:
        async def make() -> TcpProxy:
            p = TcpProxy(listen_port, target_port)
            await p.start()
            return p

        proxy = self._call(make())
        self.proxies.append(proxy)
        return proxy

    def cut(self, proxy: TcpProxy, reset: bool = False) -> None:
        self._do(proxy._cut)
        if reset:
            self._do(proxy._reset)

    def delay(self, proxy: TcpProxy, seconds: float) -> None:
        def set_delay() -> None:
            proxy.delay_s = seconds

        self._do(set_delay)

    def heal(self, proxy: TcpProxy) -> None:
        self._do(proxy._heal)

    def heal_all(self) -> None:
        for p in self.proxies:
            self.heal(p)

    def close(self) -> None:
        if not self._loop.is_running():
            return
        for p in self.proxies:
            with contextlib.suppress(Exception):
                self._call(p.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
