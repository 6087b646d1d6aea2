"""A hypothesis state machine over the write-ahead tier: add / fence (recover) / crash / restart / delete.

Three bookies, each served by a ``BookieServer`` on a real socket on 127.0.0.1, reached by two ledger
clients over TCP (a writer's and a recoverer's, think two brokers). Rules create ledgers (E=3 with Qw=3,
Qa=2 or Qw=Qa=2), append (sometimes crashing a bookie with entries in flight), close, recover with
fencing, crash a bookie (its journal closed without flushing what is queued, no checkpoint), restart it
(from its index checkpoint or by a full journal rescan), shut it down cleanly, compact and checkpoint its
journal (small journal files, so files roll, get reclaimed and compacted), and delete ledgers.

The guarantee checked: every confirmed entry survives, byte for byte; a closed ledger's last entry never
changes and is at or past every confirmed entry; no entry past a closed ledger's last entry is ever
readable; a fenced writer never confirms again. Reads are checked whenever at most one bookie is down,
and at the end of every run with every bookie restarted.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, precondition, rule

from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie.bookie import Bookie
from storage.bookie.maintenance import MaintenanceConfig
from storage.bookie.protocol import BookieClient
from storage.bookie.server import BookieServer
from storage.bookie.tcp_client import TcpBookieClient
from storage.ledger.api import LedgerError, LedgerFenced, LedgerState, NoSuchEntry, NoSuchLedger, NotEnoughBookies
from storage.ledger.client import QuorumLedgerClient, QuorumLedgerWriter

T = TypeVar("T")
SIZES = st.lists(st.integers(0, 3000), min_size=1, max_size=30)
WAIT = 60.0
ROLL = 16 * 1024
BOOKIES = 3


def payload(ledger_id: int, entry_id: int, size: int) -> bytes:
    head = f"<{ledger_id}.{entry_id}>".encode()
    return (head * (size // len(head) + 1))[:size]


@dataclass
class LedgerModel:
    ledger_id: int
    writer: QuorumLedgerWriter | None
    sizes: dict[int, int] = field(default_factory=dict)  # every entry id appended → its size
    confirmed: set[int] = field(default_factory=set)
    last: int | None = None  # set once the ledger is closed (by its writer or a recovery)
    fenced: bool = False  # a recovery fenced it: its writer may never confirm again
    confirmed_at_fence: int = -1
    deleted: bool = False


class LedgerMachine(RuleBasedStateMachine):
    ledgers = Bundle("ledgers")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="tidelog-stateful-"))
        self.bookies: list[Bookie | None] = [None] * BOOKIES
        self.servers: list[BookieServer | None] = [None] * BOOKIES
        self.ports = [0] * BOOKIES
        self.models: dict[int, LedgerModel] = {}
        self.transports: list[TcpBookieClient] = []
        self.run(self._setup())

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, WAIT))

    async def _setup(self) -> None:
        self.store = await EmbeddedMetadataStore.open(None)
        for i in range(BOOKIES):
            await self._start(i, use_checkpoint=True)
        self.writer_client = self._client()
        self.recovery_client = self._client()

    def _client(self) -> QuorumLedgerClient:
        own: dict[str, BookieClient] = {}
        for i in range(BOOKIES):
            t = TcpBookieClient(f"b{i}", "127.0.0.1", self.ports[i], initial_backoff=0.005, max_backoff=0.02)
            self.transports.append(t)
            own[t.bookie_id] = t
        return QuorumLedgerClient(self.store, Keys("stateful"), own)

    async def _start(self, i: int, use_checkpoint: bool) -> None:
        bookie = await Bookie.open(
            self.dir / f"b{i}", bookie_id=f"b{i}", journal_roll_size=ROLL, use_checkpoint=use_checkpoint,
            maintenance=MaintenanceConfig(checkpoint_bytes=64 * 1024, compact_threshold=0.6),
        )  # fmt: skip
        server = BookieServer(bookie)
        _, self.ports[i] = await server.start("127.0.0.1", self.ports[i])
        self.bookies[i], self.servers[i] = bookie, server
        for t in self.transports:  # wait out the transports' reconnect backoff (at most 20 ms)
            if t.bookie_id == bookie.bookie_id:
                for _ in range(200):
                    try:
                        await t.health()
                        break
                    except LedgerError:
                        await asyncio.sleep(0.005)

    async def _stop(self, i: int, clean: bool) -> None:
        bookie, server = self.bookies[i], self.servers[i]
        self.bookies[i] = self.servers[i] = None
        assert bookie is not None and server is not None
        await server.stop()
        await (bookie.close() if clean else bookie.crash())

    @property
    def down(self) -> int:
        return sum(1 for b in self.bookies if b is None)

    def live(self, i: int) -> bool:
        return self.bookies[i] is not None

    # --- rules: ledgers -----------------------------------------------------------------------
    @initialize(target=ledgers, sizes=SIZES)
    def first_ledger(self, sizes: list[int]) -> int:
        return self.create_ledger(False, sizes)

    @rule(target=ledgers, striped=st.booleans(), sizes=SIZES)
    def create_ledger(self, striped: bool, sizes: list[int]) -> int:
        writer = self.run(self.writer_client.create_ledger(3, 2 if striped else 3, 2))
        model = self.models[writer.ledger_id] = LedgerModel(writer.ledger_id, writer)
        self._settle(model, self._append(model, sizes))
        return writer.ledger_id

    def _append(self, model: LedgerModel, sizes: list[int]) -> list[asyncio.Future[int]]:
        assert model.writer is not None
        futures = []
        for size in sizes:
            entry_id = model.writer._next
            try:
                future = model.writer.append(payload(model.ledger_id, entry_id, size))
            except LedgerError:
                break
            model.sizes[entry_id] = size
            futures.append(future)
        return futures

    def _settle(self, model: LedgerModel, futures: list[asyncio.Future[int]]) -> None:
        async def gather() -> list[int | BaseException]:
            return await asyncio.gather(*futures, return_exceptions=True)

        results = self.run(gather())
        for result in results:
            if isinstance(result, BaseException):
                assert isinstance(result, LedgerFenced | NotEnoughBookies), repr(result)
            else:
                if model.fenced:  # a fenced writer never confirms again
                    assert result <= model.confirmed_at_fence, (model.ledger_id, result, model.confirmed_at_fence)
                model.confirmed.add(result)
                if model.last is not None:
                    assert result <= model.last

    @rule(ledger_id=ledgers, sizes=SIZES)
    def append(self, ledger_id: int, sizes: list[int]) -> None:
        model = self.models[ledger_id]
        if model.writer is None or model.deleted:
            return
        self._settle(model, self._append(model, sizes))

    @rule(ledger_id=ledgers, sizes=SIZES)
    def append_more(self, ledger_id: int, sizes: list[int]) -> None:
        """The same as ``append`` (a second rule, so that appends are drawn twice as often)."""
        self.append(ledger_id, sizes)

    @precondition(lambda self: self.down == 0)
    @rule(ledger_id=ledgers, sizes=SIZES, victim=st.integers(0, BOOKIES - 1), spins=st.integers(0, 20))
    def append_while_a_bookie_crashes(self, ledger_id: int, sizes: list[int], victim: int, spins: int) -> None:
        model = self.models[ledger_id]
        if model.writer is None or model.deleted:
            return
        futures = self._append(model, sizes)

        async def crash_soon() -> None:
            for _ in range(spins):
                await asyncio.sleep(0)
            await self._stop(victim, clean=False)

        self.run(crash_soon())
        self._settle(model, futures)

    @rule(ledger_id=ledgers)
    def close(self, ledger_id: int) -> None:
        model = self.models[ledger_id]
        if model.writer is None or model.deleted:
            return
        writer, model.writer = model.writer, None
        try:
            last = self.run(writer.close())
        except LedgerFenced:
            return  # recovered (or being recovered) elsewhere
        assert all(e <= last for e in model.confirmed)
        self._closed_at(model, last)

    def _closed_at(self, model: LedgerModel, last: int) -> None:
        if model.last is not None:
            assert last == model.last, f"ledger {model.ledger_id} closed at {model.last}, now at {last}"
        model.last = last
        assert all(e <= last for e in model.confirmed), (model.ledger_id, sorted(model.confirmed), last)

    @rule(ledger_id=ledgers)
    def recover(self, ledger_id: int) -> None:
        """Another client opens the ledger with recovery: fence, recover, close."""
        model = self.models[ledger_id]
        try:
            reader = self.run(self.recovery_client.open_ledger(ledger_id, recover=True))
        except NoSuchLedger:
            assert model.deleted
            return
        except NotEnoughBookies:  # too few bookies up to fence or to establish the tail: retried later
            assert self.down >= 1
            return
        assert not model.deleted
        assert reader.info.state is LedgerState.CLOSED
        if not model.fenced:
            model.fenced = True
            model.confirmed_at_fence = reader.info.last_entry_id
        self._closed_at(model, reader.info.last_entry_id)
        if self.down <= 1:
            self.run(self._check_ledger(model))

    @rule(ledger_id=ledgers)
    def delete(self, ledger_id: int) -> None:
        model = self.models[ledger_id]
        if model.deleted:
            return
        self.run(self.writer_client.delete_ledger(ledger_id))
        model.deleted = True

    # --- rules: bookies -----------------------------------------------------------------------
    @precondition(lambda self: self.down <= 1)  # two down at most: then nothing can be written
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from([i for i in range(BOOKIES) if self.live(i)]))
        self.run(self._stop(i, clean=False))

    @precondition(lambda self: self.down >= 1)
    @rule(data=st.data(), use_checkpoint=st.booleans())
    def restart(self, data: st.DataObject, use_checkpoint: bool) -> None:
        i = data.draw(st.sampled_from([i for i in range(BOOKIES) if not self.live(i)]))
        self.run(self._start(i, use_checkpoint))

    @rule(i=st.integers(0, BOOKIES - 1), use_checkpoint=st.booleans())
    def clean_restart(self, i: int, use_checkpoint: bool) -> None:
        if self.live(i):
            self.run(self._stop(i, clean=True))
            self.run(self._start(i, use_checkpoint))

    @rule(i=st.integers(0, BOOKIES - 1))
    def checkpoint_and_compact(self, i: int) -> None:
        bookie = self.bookies[i]
        if bookie is not None:
            self.run(bookie.checkpoint())
            self.run(bookie.compact())

    @precondition(lambda self: self.down <= 1)
    @rule()
    def check_everything(self) -> None:
        for model in self.models.values():
            self.run(self._check_ledger(model))

    # --- the guarantee ------------------------------------------------------------------------
    async def _check_ledger(self, model: LedgerModel) -> None:
        client = self.recovery_client
        if model.deleted:
            with pytest.raises(NoSuchLedger):
                await client.open_ledger(model.ledger_id, recover=False)
            return
        reader = await client.open_ledger(model.ledger_id, recover=False)
        info = reader.info
        if info.state is LedgerState.CLOSED:
            assert model.last is None or info.last_entry_id == model.last
            last = info.last_entry_id
            assert all(e <= last for e in model.confirmed)
            if last >= 0:
                got = await reader.read(0, last)
                assert got == [payload(model.ledger_id, e, model.sizes[e]) for e in range(last + 1)]
                assert info.length == sum(model.sizes[e] for e in range(last + 1))
            with pytest.raises(NoSuchEntry):  # nothing past the last entry is ever readable
                await reader.read(last + 1, last + 1)
            with pytest.raises(NoSuchEntry):
                await reader.read(max(0, last), last + 5)
        else:  # still open: every confirmed entry is readable
            for entry_id in sorted(model.confirmed):
                expected = payload(model.ledger_id, entry_id, model.sizes[entry_id])
                assert await reader.read(entry_id, entry_id) == [expected]

    def teardown(self) -> None:
        try:
            for i in range(BOOKIES):
                if not self.live(i):
                    self.run(self._start(i, use_checkpoint=True))
            for model in self.models.values():
                if not model.deleted:
                    reader = self.run(self.recovery_client.open_ledger(model.ledger_id, recover=True))
                    self._closed_at(model, reader.info.last_entry_id)
                self.run(self._check_ledger(model))
        finally:
            self.run(self._close())
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _close(self) -> None:
        for t in self.transports:
            await t.close()
        for i in range(BOOKIES):
            if self.live(i):
                await self._stop(i, clean=True)
        await self.store.close()


FAST = settings(
    max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
SLOW = settings(max_examples=300, stateful_step_count=60, deadline=None, suppress_health_check=list(HealthCheck))


def test_every_confirmed_entry_survives() -> None:
    """A fixed set of generated runs (derandomized), well under a minute."""
    LedgerMachine.TestCase.settings = FAST
    LedgerMachine.TestCase().runTest()


@pytest.mark.slow
def test_every_confirmed_entry_survives_long() -> None:
    """Many more and longer random runs (``make test-all``)."""
    LedgerMachine.TestCase.settings = SLOW
    LedgerMachine.TestCase().runTest()
