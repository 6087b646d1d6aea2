"""A TCP listener that serves each connection in its own task and cancels them all on stop (the Kafka
listener and the admin HTTP listener)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class Listener:
    """Subclasses implement ``_serve``; ``read_limit`` is the StreamReader buffer limit."""

    read_limit = 64 * 1024

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.ssl_context: ssl.SSLContext | None = None
        """TLS for every connection (the handshake happens before ``_serve``), or None."""
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Connections being served now (the one being accepted included)."""
        return len(self._connections)

    @property
    def listening(self) -> bool:
        """Whether the listener accepts connections now (``/readyz``)."""
        return self._server is not None and self._server.is_serving()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=self.read_limit, ssl=self.ssl_context
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
