"""Connections from this broker to the others, for the coordinator's broker-to-broker requests.

WriteTxnMarkers goes to the leader of each transaction partition led elsewhere, and a KIP-890 verification
(AddPartitionsToTxn v4+ ``verify_only``) to the coordinator of a transactional id that lives elsewhere. Both
speak the Kafka wire protocol through the client of brokers/cli/client.py (its ``Connection``: version
negotiation, pipelining, correlation), one connection per peer, dropped and reopened when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib

from brokers.cli.client import ClientError, Connection
from brokers.routing import Endpoint

PEER_TIMEOUT_S = 10.0
CLIENT_ID = "tidelog-txn-coordinator"


class Peers:
    """One lazily opened connection per peer broker (host, port)."""

    def __init__(self, timeout_s: float = PEER_TIMEOUT_S) -> None:
        self._timeout = timeout_s
        self._conns: dict[tuple[str, int], Connection] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def connection(self, endpoint: Endpoint) -> Connection:
        """The open connection to ``endpoint``; raises ClientError (BrokerUnreachable, ...) if none can be made."""
        key = (endpoint.host, endpoint.port)
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._conns.get(key)
            if conn is None or conn.closed:
                conn = await Connection.open(endpoint.host, endpoint.port, client_id=CLIENT_ID,
                                             request_timeout=self._timeout)
                self._conns[key] = conn
            return conn

    async def drop(self, endpoint: Endpoint) -> None:
        """Forget a connection that failed (the next call reconnects)."""
        conn = self._conns.pop((endpoint.host, endpoint.port), None)
        if conn is not None:
            with contextlib.suppress(ClientError, OSError):
                await conn.close()

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(ClientError, OSError):
                await conn.close()
