"""Which of a fixed set of bookies are live, for a broker given bookie addresses directly (no registry).

Every ``interval`` each transport is asked for its health. A bookie that does not answer — connection
refused or lost, no answer within ``timeout``, or a report saying its journal failed — leaves the ledger
client's live set, so new ledgers are placed on the others; it rejoins once it answers again. Writes to a
bookie that just died fail fast on their own (the TCP transport fails requests of a lost connection), so
the probe only decides placement and reads. With a metadata store, ``storage.bookie.registry`` does this
job from lease-bound registrations instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from storage.bookie.protocol import BookieClient
from storage.ledger.client import QuorumLedgerClient

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.2
PROBE_TIMEOUT = 2.0


class BookieLiveness:
    """Keeps ``ledgers``' live set equal to the bookies among ``clients`` that answer a health probe."""

    def __init__(
        self,
        ledgers: QuorumLedgerClient,
        clients: Sequence[BookieClient],
        *,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._ledgers = ledgers
        self._clients = list(clients)
        self._interval = interval
        self._timeout = timeout
        self._live: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> frozenset[str]:
        """Ids of the bookies that answered the last probe."""
        return frozenset(self._live)

    async def start(self) -> None:
        """Probe once, then keep probing in the background."""
        await self.probe()
        self._task = asyncio.create_task(self._run(), name="bookie-liveness")

    async def wait_for(self, count: int) -> None:
        """Wait until at least ``count`` bookies are live (bound it with ``asyncio.timeout``)."""
        while len(self._live) < count:
            self._changed.clear()
            await self._changed.wait()

    async def probe(self) -> None:
        """Ask every bookie once and update the live set."""
        results = await asyncio.gather(*(self._answers(c) for c in self._clients))
        for client, ok in zip(self._clients, results, strict=True):
            bookie_id = client.bookie_id
            if ok and bookie_id not in self._live:
                self._live.add(bookie_id)
                self._ledgers.add_bookie(client)
                log.info("bookie %s is live", bookie_id)
                self._changed.set()
            elif not ok and bookie_id in self._live:
                self._live.discard(bookie_id)
                self._ledgers.remove_bookie(bookie_id)
                log.warning("bookie %s is down", bookie_id)
                self._changed.set()

    async def _answers(self, client: BookieClient) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                return (await client.health()).ok
        except Exception:  # any failure means: not live now
            return False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.probe()
            except Exception:
                log.exception("bookie probe failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
