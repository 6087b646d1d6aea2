"""Fencing under random timing: a second client recovers a ledger while its first writer is still writing.

Three bookies, each served by a ``BookieServer`` on a real socket on 127.0.0.1 and reached over TCP (each
client has connections of its own), E=3, Qw=3, Qa=2. Every round, writer A pipelines entries with random
sizes, depths and pauses (sometimes losing its connection to one bookie), and client B opens the ledger
with recovery at a random moment: right after a burst of appends (entries certainly in flight), after a
random delay, or after some confirmations. Then A keeps appending. Checked every round:

* every entry A ever confirmed is in the recovered ledger, byte for byte, and none past its last entry;
* A's first append after the recovery fails with LedgerFenced, and A confirms nothing after that;
* another recovery of the closed ledger agrees.

Seeded (``TIDELOG_FENCING_SEED`` to replay another seed); ``ROUNDS`` rounds (at least 200).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie.bookie import Bookie
from storage.bookie.protocol import BookieClient
from storage.bookie.server import BookieServer
from storage.bookie.tcp_client import TcpBookieClient
from storage.ledger.api import LedgerError, LedgerFenced, LedgerState, NoSuchEntry
from storage.ledger.client import QuorumLedgerClient, QuorumLedgerWriter

ROUNDS = 200
SEED = int(os.environ.get("TIDELOG_FENCING_SEED", "20240604"))
WAIT = 30.0


def payload(ledger_id: int, entry_id: int, size: int) -> bytes:
    head = f"[{ledger_id}#{entry_id}]".encode()
    return (head * (size // len(head) + 1))[:size]


@dataclass
class Cluster:
    store: EmbeddedMetadataStore
    bookies: list[Bookie]
    servers: list[BookieServer]
    transports: list[TcpBookieClient] = field(default_factory=list)

    def client(self) -> tuple[QuorumLedgerClient, dict[str, TcpBookieClient]]:
        """A ledger client with connections of its own (another broker)."""
        own = {
            s.bookie.bookie_id: TcpBookieClient(s.bookie.bookie_id, *s.address, initial_backoff=0.01, max_backoff=0.05)
            for s in self.servers
        }
        self.transports.extend(own.values())
        bookies: dict[str, BookieClient] = dict(own)
        return QuorumLedgerClient(self.store, Keys("fencing"), bookies), own


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    store = await EmbeddedMetadataStore.open(None)
    bookies = [await Bookie.open(tmp_path / f"b{i}", bookie_id=f"b{i}") for i in range(3)]
    servers = [BookieServer(b) for b in bookies]
    for server in servers:
        await server.start("127.0.0.1", 0)
    c = Cluster(store, bookies, servers)
    try:
        yield c
    finally:
        for t in c.transports:
            await t.close()
        for server in servers:
            await server.stop()
        for bookie in bookies:
            await bookie.close()
        await store.close()


@dataclass
class Writer:
    """Writer A's side of a round: what it appended, confirmed and saw fail, in order."""

    writer: QuorumLedgerWriter
    rng: random.Random
    sizes: dict[int, int] = field(default_factory=dict)
    events: list[tuple[str, int, str]] = field(default_factory=list)  # (confirmed|failed, entry id, error)
    futures: list[asyncio.Future[int]] = field(default_factory=list)
    refused_at_once: list[str] = field(default_factory=list)

    def append(self) -> int | None:
        """Append one entry; returns its id, or None if the writer refused at once."""
        entry_id = self.writer._next
        size = self.rng.choice((0, 1, 100, 1000, 5000, 40000))
        try:
            future = self.writer.append(payload(self.writer.ledger_id, entry_id, size))
        except LedgerError as exc:
            self.refused_at_once.append(type(exc).__name__)
            return None
        self.sizes[entry_id] = size

        def done(f: asyncio.Future[int], entry_id: int = entry_id) -> None:
            exc = f.exception()
            self.events.append(("confirmed", entry_id, "") if exc is None else ("failed", entry_id, type(exc).__name__))

        future.add_done_callback(done)
        self.futures.append(future)
        return entry_id

    def in_flight(self) -> int:
        return sum(1 for f in self.futures if not f.done())

    async def run(self, stop: asyncio.Event, depth: int, pause: float) -> None:
        """Append until stopped or refused, keeping at most ``depth`` in flight, pausing at random."""
        while not stop.is_set():
            if self.append() is None:
                return
            if self.in_flight() >= depth:
                await asyncio.wait([f for f in self.futures if not f.done()], return_when=asyncio.FIRST_COMPLETED)
            if self.rng.random() < 0.3:
                await asyncio.sleep(self.rng.uniform(0, pause))
            else:
                await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_recovery_while_the_writer_writes_random_timing(cluster: Cluster) -> None:
    rng = random.Random(SEED)
    a_client, a_transports = cluster.client()
    b_client, _ = cluster.client()
    rounds_in_flight = rounds_rereplicated = rounds_with_drop = 0
    for round_no in range(ROUNDS):
        w = Writer(await a_client.create_ledger(3, 3, 2), rng)
        ledger_id = w.writer.ledger_id
        stop = asyncio.Event()
        mode = rng.choice(("burst", "delay", "confirms"))
        if mode == "burst":
            for _ in range(rng.randint(1, 40)):
                w.append()
        runner = asyncio.ensure_future(w.run(stop, depth=rng.choice((1, 4, 16, 64)), pause=rng.choice((0.0005, 0.003))))
        if mode == "delay":
            await asyncio.sleep(rng.uniform(0, 0.01))
        elif mode == "confirms":
            want = rng.randint(0, 30)
            async with asyncio.timeout(WAIT):
                while sum(1 for e in w.events if e[0] == "confirmed") < want and not runner.done():
                    await asyncio.sleep(0.001)
        if rng.random() < 0.3:  # A loses its connection to one bookie: entries on only some bookies
            rounds_with_drop += 1
            victim = rng.choice(list(a_transports.values()))
            asyncio.get_running_loop().call_later(rng.uniform(0, 0.005), victim.disconnect)
        in_flight_at_start = w.in_flight()
        lac_at_start = w.writer.last_add_confirmed
        rounds_in_flight += in_flight_at_start > 0

        reader = await asyncio.wait_for(b_client.open_ledger(ledger_id, recover=True), WAIT)  # A keeps writing
        info = reader.info
        assert info.state is LedgerState.CLOSED
        last = info.last_entry_id
        rounds_rereplicated += last > lac_at_start

        # A's next append after the recovery fails with LedgerFenced (at once or when answered) ...
        stop.set()
        await asyncio.wait_for(runner, WAIT)
        seen = len(w.events)
        next_id = w.append()
        if next_id is None:
            assert w.refused_at_once[-1] == "LedgerFenced", w.refused_at_once
        else:
            with pytest.raises(LedgerFenced):
                await asyncio.wait_for(w.futures[-1], WAIT)
        await asyncio.wait_for(asyncio.gather(*w.futures, return_exceptions=True), WAIT)
        # ... and nothing is confirmed after that, nor anything past the recovered ledger's end
        after = w.events[seen:]
        assert not [e for e in after if e[0] == "confirmed" and next_id is not None and e[1] >= next_id], after
        confirmed = sorted(e[1] for e in w.events if e[0] == "confirmed")
        assert confirmed == list(range(len(confirmed))), "confirmed out of order"
        assert not confirmed or confirmed[-1] <= last, (round_no, confirmed[-1], last)
        assert w.writer.last_add_confirmed <= last
        assert all(e[2] in ("LedgerFenced", "NotEnoughBookies") for e in w.events if e[0] == "failed"), w.events

        # every confirmed entry is in the recovered ledger, byte for byte, and the ledger ends at ``last``
        if last >= 0:
            got = await reader.read(0, last)
            assert got == [payload(ledger_id, i, w.sizes[i]) for i in range(last + 1)]
            assert info.length == sum(w.sizes[i] for i in range(last + 1))
        with pytest.raises(NoSuchEntry):
            await reader.read(last + 1, last + 1)
        again = await b_client.open_ledger(ledger_id, recover=True)
        assert (again.info.state, again.info.last_entry_id) == (LedgerState.CLOSED, last)

    print(f"in flight: {rounds_in_flight}, re-replicated: {rounds_rereplicated}, drops: {rounds_with_drop} rounds")
    # the rounds really had entries in flight and recovered some of them (burst rounds guarantee the first)
    assert rounds_in_flight >= ROUNDS // 4, rounds_in_flight
    assert rounds_rereplicated > 0
    assert rounds_with_drop > 0
