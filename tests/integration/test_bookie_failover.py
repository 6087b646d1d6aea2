"""PartitionLog through bookie failures, over real in-process bookies (journals on disk) and the quorum
ledger client; ``ChaosBookieClient`` holds or drops adds so entries are in flight when a bookie dies.

What must hold (design §5 step 5): in-flight produce requests complete in a new ledger rather than fail;
entries recovery finds in the old ledger are confirmed as they are; with fewer than Qa bookies alive the
answer is NOT_ENOUGH_REPLICAS and nothing is acknowledged, and production resumes once bookies return;
offsets stay contiguous, nothing is written twice, nothing acknowledged is lost; a fenced ledger means
NOT_LEADER_OR_FOLLOWER. Each test ends by reading the whole log back through a new owner.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.codec import batch
from brokers.log.partition import AppendResult, LogConfig, LogError, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie.bookie import Bookie
from storage.bookie.protocol import LocalBookieClient
from storage.ledger.client import QuorumLedgerClient
from tests.batches import make_batch
from tests.contract.ledger_fixtures import ChaosBookieClient

KEYS = Keys("failover")
WAIT = 30.0  # hang guard only
RECORDS = 3  # records per batch
TS = itertools.count(1_000_000, 100)  # unique batch timestamps: a batch's identity when read back


@dataclass
class World:
    """N in-process bookies, each behind a ChaosBookieClient, and one broker's ledger client over them."""

    tmp: Path
    store: EmbeddedMetadataStore
    bookies: dict[str, Bookie]
    chaos: dict[str, ChaosBookieClient]
    client: QuorumLedgerClient
    dead: set[str] = field(default_factory=set)
    extra_clients: list[QuorumLedgerClient] = field(default_factory=list)

    async def kill(self, bookie_id: str) -> None:
        """The bookie dies: it leaves the live set, held calls fail, its journal closes."""
        self.client.remove_bookie(bookie_id)
        self.dead.add(bookie_id)
        self.chaos[bookie_id].release()
        await self.bookies[bookie_id].close()

    async def revive(self, bookie_id: str) -> None:
        """The bookie restarts from its journal and rejoins the live set."""
        bookie = await Bookie.open(self.tmp / bookie_id, bookie_id=bookie_id)
        self.bookies[bookie_id] = bookie
        self.chaos[bookie_id] = ChaosBookieClient(LocalBookieClient(bookie))
        self.client.add_bookie(self.chaos[bookie_id])
        self.dead.discard(bookie_id)

    def other_client(self) -> QuorumLedgerClient:
        """Another broker's ledger client over the live bookies."""
        live = {b: c for b, c in self.chaos.items() if b not in self.dead}
        client = QuorumLedgerClient(self.store, KEYS, live)
        self.extra_clients.append(client)
        return client

    async def ensemble_of(self, plog: PartitionLog) -> tuple[str, ...]:
        info = await self.client.ledger_info(plog.ledgers[-1].ledger_id)
        assert info is not None
        return info.ensemble


async def _world(tmp: Path, count: int) -> World:
    store = await EmbeddedMetadataStore.open(None)
    bookies = {f"b{i}": await Bookie.open(tmp / f"b{i}", bookie_id=f"b{i}") for i in range(count)}
    chaos = {b: ChaosBookieClient(LocalBookieClient(bookie)) for b, bookie in bookies.items()}
    return World(tmp, store, bookies, chaos, QuorumLedgerClient(store, KEYS, chaos))


async def _close(world: World) -> None:
    for chaos in world.chaos.values():
        chaos.release()
    await asyncio.sleep(0)
    for bookie in world.bookies.values():
        await bookie.close()
    await world.store.close()


@pytest_asyncio.fixture
async def world4(tmp_path: Path) -> AsyncIterator[World]:
    world = await _world(tmp_path, 4)
    yield world
    await _close(world)


@pytest_asyncio.fixture
async def world3(tmp_path: Path) -> AsyncIterator[World]:
    world = await _world(tmp_path, 3)
    yield world
    await _close(world)


def _batch(producer_id: int = -1, seq: int = -1) -> tuple[bytes, int]:
    """A batch of RECORDS records with a unique timestamp (returned as its identity)."""
    ts = next(TS)
    return make_batch(RECORDS, base_ts=ts, producer_id=producer_id, base_seq=seq), ts


async def _log(world: World, quorum: tuple[int, int, int] = (3, 3, 2)) -> PartitionLog:
    e, qw, qa = quorum
    plog = PartitionLog(world.store, KEYS, world.client, "tid", 0, LogConfig(ensemble_size=e, write_quorum=qw,
                                                                           ack_quorum=qa))
    await plog.load()
    return plog


async def _append(plog: PartitionLog, data: bytes) -> asyncio.Future[AppendResult]:
    return await plog.append(data, batch.validate(data))


async def _settled(futures: list[asyncio.Future[AppendResult]]) -> list[AppendResult | BaseException]:
    async with asyncio.timeout(WAIT):
        return list(await asyncio.gather(*futures, return_exceptions=True))


async def _read_back(world: World) -> list[tuple[int, int]]:
    """(base offset, batch timestamp) of every batch, read by a new owner that recovers the log."""
    plog = PartitionLog(world.store, KEYS, world.other_client(), "tid", 0, LogConfig())
    await plog.load()
    out: list[tuple[int, int]] = []
    offset = 0
    while offset < plog.high_watermark:
        result = await plog.read(offset, 1 << 20)
        for head in batch.iter_headers(b"".join(result.batches)):
            out.append((head.base_offset, head.base_timestamp))
            offset = head.last_offset + 1
    return out


def _assert_log(read: list[tuple[int, int]], acked: dict[int, int], maybe: set[int] = frozenset()) -> None:
    """Contiguous offsets, every batch once, every acknowledged batch at its acknowledged offset, and
    nothing that was neither acknowledged nor possibly written (``maybe``: answered with an error)."""
    offsets = [o for o, _ in read]
    assert offsets == list(range(0, RECORDS * len(read), RECORDS)), f"offsets not contiguous: {offsets}"
    stamps = [ts for _, ts in read]
    assert len(stamps) == len(set(stamps)), "a batch was written twice"
    where = {ts: o for o, ts in read}
    for ts, offset in acked.items():
        assert where.get(ts) == offset, f"acknowledged batch {ts} at {offset}, read back at {where.get(ts)}"
    assert set(where) <= set(acked) | set(maybe), "a batch nobody wrote is in the log"


@pytest.mark.asyncio
async def test_bookie_dies_with_entries_in_flight_they_complete_in_a_new_ledger(world4: World) -> None:
    """E=3 Qw=3 Qa=2 on 4 bookies. The in-flight entries reached only the bookie that then died (the other
    two never got them), so recovery closes the old ledger before them and they are written again, same
    offsets, to a new ledger on the live bookies; every produce request completes."""
    plog = await _log(world4)
    acked: dict[int, int] = {}
    for _ in range(5):
        data, ts = _batch()
        acked[ts] = (await (await _append(plog, data))).base_offset
    victim, s, t = await world4.ensemble_of(plog)
    first_ledger = plog.ledgers[-1].ledger_id
    world4.chaos[s].drop_adds = world4.chaos[t].drop_adds = lambda _entry_id: True
    stamps, futures = [], []
    for _ in range(10):
        data, ts = _batch()
        stamps.append(ts)
        futures.append(await _append(plog, data))
    await asyncio.sleep(0.05)
    assert plog.inflight == 10 and plog.high_watermark == 15  # only the victim took them: no quorum
    world4.chaos[s].drop_adds = world4.chaos[t].drop_adds = None
    await world4.kill(victim)
    world4.chaos[s].release()  # the adds they never got fail now (the connection "drops")
    world4.chaos[t].release()
    results = await _settled(futures)
    assert all(isinstance(r, AppendResult) for r in results), results
    bases = [r.base_offset for r in results if isinstance(r, AppendResult)]
    assert bases == list(range(15, 45, 3))
    acked.update(zip(stamps, bases, strict=True))
    assert plog.high_watermark == 45 and plog.inflight == 0 and plog.ledger_switches == 1
    refs = plog.ledgers
    assert refs[0].ledger_id == first_ledger and refs[0].closed and refs[0].last_offset == 14
    assert refs[-1].first_offset == 15 and victim not in await world4.ensemble_of(plog)
    data, ts = _batch()  # and production carries on
    acked[ts] = (await (await _append(plog, data))).base_offset
    assert acked[ts] == 45
    _assert_log(await _read_back(world4), acked)


@pytest.mark.asyncio
async def test_entries_recovery_finds_in_the_old_ledger_are_confirmed_there(world4: World) -> None:
    """The in-flight entries are stored on two bookies whose answers never come back, then both
    connections fail: recovery finds every entry on them, so they are confirmed in the old ledger as they
    are (not written again) and the log carries on in a new ledger."""
    plog = await _log(world4)
    acked: dict[int, int] = {}
    for _ in range(3):
        data, ts = _batch()
        acked[ts] = (await (await _append(plog, data))).base_offset
    a, b, c = await world4.ensemble_of(plog)
    first_ledger = plog.ledgers[-1].ledger_id
    world4.chaos[b].hold_acks_from = world4.chaos[c].hold_acks_from = 3
    world4.chaos[a].drop_adds = lambda entry_id: entry_id >= 3
    stamps, futures = [], []
    for _ in range(6):
        data, ts = _batch()
        stamps.append(ts)
        futures.append(await _append(plog, data))
    await asyncio.sleep(0.05)
    assert plog.inflight == 6 and plog.high_watermark == 9
    world4.chaos[a].drop_adds = None
    world4.chaos[b].hold_acks_from = world4.chaos[c].hold_acks_from = None
    for bookie_id in (a, b, c):
        world4.chaos[bookie_id].release()  # every held or dropped add fails: fewer than Qa acks for all
    results = await _settled(futures)
    bases = [r.base_offset for r in results if isinstance(r, AppendResult)]
    assert bases == list(range(9, 27, 3)), results
    acked.update(zip(stamps, bases, strict=True))
    data, ts = _batch()  # waits for the switch to finish (it holds the log's lock)
    acked[ts] = (await (await _append(plog, data))).base_offset
    assert acked[ts] == 27
    assert plog.ledger_switches == 1
    old = next(r for r in plog.ledgers if r.ledger_id == first_ledger)
    assert old.closed and old.last_offset == 26  # recovery found all six in the old ledger
    assert plog.ledgers[-1].first_offset == 27
    _assert_log(await _read_back(world4), acked)


@pytest.mark.asyncio
async def test_without_an_ack_quorum_nothing_is_acknowledged_and_production_resumes(world3: World) -> None:
    """E=3 Qw=3 Qa=2 on 3 bookies, an idempotent producer. Two bookies die with entries in flight: those
    requests and every new one get NOT_ENOUGH_REPLICAS and the high watermark does not move. One bookie
    comes back: the producer's retries are answered with the original offsets (no duplicates), new batches
    follow, and the new ledger lives on the two live bookies."""
    plog = await _log(world3)
    pid = 42
    seq = itertools.count(0, RECORDS)
    acked: dict[int, int] = {}
    for _ in range(4):
        data, ts = _batch(pid, next(seq))
        acked[ts] = (await (await _append(plog, data))).base_offset
    hw = plog.high_watermark
    for chaos in world3.chaos.values():
        chaos.drop_adds = lambda _entry_id: True  # nobody stores the next entries
    pending = [_batch(pid, next(seq)) for _ in range(3)]
    futures = [await _append(plog, data) for data, _ in pending]
    await asyncio.sleep(0.05)
    await world3.kill("b1")
    await world3.kill("b2")
    world3.chaos["b0"].drop_adds = None
    world3.chaos["b0"].release()
    results = await _settled(futures)
    assert all(isinstance(r, LogError) and r.code == ErrorCode.not_enough_replicas for r in results), results
    assert plog.high_watermark == hw
    for _ in range(3):  # retries while only one bookie lives: refused, nothing acknowledged
        data, _ts = pending[0]
        with pytest.raises(LogError) as refused:
            await asyncio.wait_for(await _append(plog, data), WAIT)
        assert refused.value.code == ErrorCode.not_enough_replicas
        await asyncio.sleep(0.15)
    assert plog.high_watermark == hw
    await world3.revive("b1")
    retried: list[int] = []
    for data, _ts in pending:  # the producer retries its unacknowledged batches, in order
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    retried.append((await (await _append(plog, data))).base_offset)
                    break
                except LogError as e:
                    assert e.code == ErrorCode.not_enough_replicas
                    await asyncio.sleep(0.05)  # the log's own backoff; bounded by the timeout
    assert retried == [hw, hw + 3, hw + 6]
    acked.update(zip([ts for _, ts in pending], retried, strict=True))
    data, ts = _batch(pid, next(seq))
    acked[ts] = (await (await _append(plog, data))).base_offset
    assert acked[ts] == hw + 9
    assert set(await world3.ensemble_of(plog)) == {"b0", "b1"}  # a smaller ensemble: only two are live
    _assert_log(await _read_back(world3), acked)
    again = PartitionLog(world3.store, KEYS, world3.other_client(), "tid", 0, LogConfig())
    await again.load()  # a new owner rebuilt the producer state: a late retry is still a duplicate
    data, _ts = pending[1]
    assert (await (await _append(again, data))).base_offset == hw + 3


@pytest.mark.asyncio
async def test_bookies_return_and_recovery_keeps_what_one_survivor_stored(world3: World) -> None:
    """Two of three bookies die while the third has stored (and acked) the in-flight entries: they are
    refused for now; when a bookie returns, recovery re-replicates them from the survivor and they stay
    in the old ledger at the offsets they were given (a retry is answered as a duplicate)."""
    plog = await _log(world3)
    acked: dict[int, int] = {}
    data, ts = _batch(7, 0)
    acked[ts] = (await (await _append(plog, data))).base_offset
    world3.chaos["b1"].drop_adds = world3.chaos["b2"].drop_adds = lambda _entry_id: True
    pending = [_batch(7, RECORDS * (i + 1)) for i in range(2)]
    futures = [await _append(plog, d) for d, _ in pending]
    await asyncio.sleep(0.05)
    await world3.kill("b1")
    await world3.kill("b2")
    results = await _settled(futures)
    assert all(isinstance(r, LogError) and r.code == ErrorCode.not_enough_replicas for r in results), results
    assert plog.high_watermark == RECORDS
    await world3.revive("b2")
    async with asyncio.timeout(WAIT):
        while True:
            try:
                got = await (await _append(plog, pending[0][0]))
                break
            except LogError as e:
                assert e.code == ErrorCode.not_enough_replicas
                await asyncio.sleep(0.05)
    assert got.base_offset == RECORDS  # recovered in the old ledger: a duplicate, answered at once
    assert plog.high_watermark == 3 * RECORDS
    acked[pending[0][1]] = RECORDS
    _assert_log(await _read_back(world3), acked, maybe={pending[1][1]})


@pytest.mark.asyncio
async def test_a_fenced_ledger_means_another_owner_and_is_never_retried(world3: World) -> None:
    plog = await _log(world3)
    data, _ts = _batch()
    await (await _append(plog, data))
    other = world3.other_client()
    await other.open_ledger(plog.ledgers[-1].ledger_id, recover=True)  # another broker takes over
    data, _ts = _batch()
    with pytest.raises(LogError) as fenced:
        await asyncio.wait_for(await _append(plog, data), WAIT)
    assert fenced.value.code == ErrorCode.not_leader_or_follower
    with pytest.raises(LogError) as again:
        await _append(plog, data)
    assert again.value.code == ErrorCode.not_leader_or_follower
    assert plog.ledger_switches == 0 and plog.high_watermark == RECORDS


@pytest.mark.asyncio
async def test_a_smaller_ensemble_while_bookies_are_missing_then_the_full_one(world4: World) -> None:
    """E=Qw=4, Qa=2 with one bookie down: the first ledger gets an ensemble of three; once the fourth is
    back, the log rolls over to a ledger on all four (at most a second later)."""
    await world4.kill("b3")
    plog = await _log(world4, (4, 4, 2))
    acked: dict[int, int] = {}
    data, ts = _batch()
    acked[ts] = (await (await _append(plog, data))).base_offset
    assert len(await world4.ensemble_of(plog)) == 3
    await world4.revive("b3")
    async with asyncio.timeout(WAIT):
        while len(await world4.ensemble_of(plog)) < 4:
            data, ts = _batch()
            acked[ts] = (await (await _append(plog, data))).base_offset
            await asyncio.sleep(0.1)
    assert len(plog.ledgers) == 2 and plog.ledgers[0].closed
    _assert_log(await _read_back(world4), acked)
