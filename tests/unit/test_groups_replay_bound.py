"""Must-show 4: the coordinator's load time after a million commits stays within twice that after 10,000.

A GroupShard is driven in-process — the real commit path (``offsets.commit``) over a real PartitionLog on a
real bookie (journal on disk, fsync'd group commits) and a durable embedded metadata store, no sockets.
Live state is fixed (100 groups x 10 partitions); history grows. After 10,000 and after N commits a new
owner takes the partition over as after a crash (the old writer is never closed: the open ledger is
fenced and recovered) and replays it. The deterministic bound is asserted exactly: replay reads at most one
snapshot (the live records) plus ``snapshot_records`` records plus what was in flight; and the load time
ratio is asserted too (the best of three takeovers each, so one scheduling hiccup cannot decide it).

N is 1,000,000 in the slow suite and 100,000 in the fast one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from brokers.groups.base import GroupConfig
from brokers.groups.offsets import CommitRequest, commit
from brokers.groups.shard import GroupShard
from brokers.log.partition import LogConfig, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie.bookie import Bookie
from storage.bookie.protocol import LocalBookieClient
from storage.ledger.client import QuorumLedgerClient

KEYS = Keys("bound")
GROUPS = 100
PARTITIONS = 10
LIVE = GROUPS * PARTITIONS
SNAPSHOT_RECORDS = 10_000
CONCURRENCY = 200  # committers in flight at once (as many consumers would be)
ROLLOVER = 1024 * 1024  # ledger size: what a snapshot's start-offset move can drop is whole ledgers
TAKEOVERS = 3


@dataclass(frozen=True)
class Load:
    seconds: float  # the whole takeover: partition log recovery + replay
    replay_seconds: float
    records: int
    bytes: int


class Rig:
    """A bookie, a metadata store, a ledger client and the offsets partition's current owner."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shard: GroupShard | None = None
        self.committed = 0
        self.deleted: list[int] = []

    async def open(self) -> None:
        self.store = await EmbeddedMetadataStore.open(self.root / "metadata")
        self.bookie = await Bookie.open(self.root / "bookie")
        local = LocalBookieClient(self.bookie)
        self.ledgers = QuorumLedgerClient(self.store, KEYS, {local.bookie_id: local})

    async def close(self) -> None:
        if self.shard is not None:
            await self.shard.close()
        await self.ledgers.close()
        await self.bookie.close()
        await self.store.close()

    async def take_over(self) -> Load:
        """A new owner: recover the partition log (fencing the old writer) and replay it."""
        if self.shard is not None:
            await self.shard.close()  # stops its timers; its ledger stays open, as after a crash
        started = time.perf_counter()
        plog = PartitionLog(self.store, KEYS, self.ledgers, "offsets-topic", 0, LogConfig(rollover_bytes=ROLLOVER))
        await plog.load()
        shard = GroupShard(0, plog, GroupConfig(snapshot_records=SNAPSHOT_RECORDS), self._delete)
        stats = await shard.load()
        took = time.perf_counter() - started
        self.shard = shard
        return Load(took, stats.seconds, stats.records, stats.bytes)

    def _delete(self, ledger_ids: list[int]) -> None:
        self.deleted.extend(ledger_ids)
        assert self.shard is not None
        self.shard.spawn(self._delete_now(ledger_ids))

    async def _delete_now(self, ledger_ids: list[int]) -> None:
        for ledger_id in ledger_ids:
            await self.ledgers.delete_ledger(ledger_id)

    async def commit_until(self, total: int) -> None:
        """Commit offsets, one partition per OffsetCommit, until ``total`` commits were made overall."""
        shard = self.shard
        assert shard is not None
        start = self.committed
        self.committed = total

        async def committer(first: int) -> None:
            for i in range(first, total, CONCURRENCY):
                group = f"group-{i % GROUPS}"
                req = CommitRequest("orders", (i // GROUPS) % PARTITIONS, i, -1, None)
                codes = await commit(shard, group, "", None, -1, [req], lambda _t, _p: True, 8)
                assert codes == [codes[0]] and codes[0].value == 0, codes

        await asyncio.gather(*(committer(start + c) for c in range(CONCURRENCY)))
        while shard._snapshot_task is not None and not shard._snapshot_task.done():
            await shard._snapshot_task

    def expected_offsets(self) -> dict[str, dict[tuple[str, int], int]]:
        out: dict[str, dict[tuple[str, int], int]] = {}
        for i in range(max(0, self.committed - LIVE), self.committed):
            out.setdefault(f"group-{i % GROUPS}", {})[("orders", (i // GROUPS) % PARTITIONS)] = i
        return out


async def _best_of(rig: Rig) -> tuple[float, list[Load]]:
    loads = [await rig.take_over() for _ in range(TAKEOVERS)]
    return min(x.seconds for x in loads), loads


async def _run(tmp_path: Path, total: int) -> None:
    rig = Rig(tmp_path)
    await rig.open()
    try:
        await rig.take_over()
        started = time.perf_counter()
        await rig.commit_until(10_000)
        small, small_loads = await _best_of(rig)
        await rig.commit_until(total)
        rate = (total - 10_000) / (time.perf_counter() - started)
        large, large_loads = await _best_of(rig)
        assert rig.shard is not None
        got = {g: {tp: c.offset for tp, c in by.items()} for g, by in rig.shard.offsets.items()}
        assert got == rig.expected_offsets()  # every live offset survived every takeover
        bound = LIVE + SNAPSHOT_RECORDS + CONCURRENCY
        print(
            f"\nload after 10,000 commits: {small * 1000:.1f} ms best of {TAKEOVERS} (replay "
            f"{min(x.replay_seconds for x in small_loads) * 1000:.1f} ms, {small_loads[0].records} records, "
            f"{small_loads[0].bytes} bytes); after {total:,} commits: {large * 1000:.1f} ms (replay "
            f"{min(x.replay_seconds for x in large_loads) * 1000:.1f} ms, {large_loads[0].records} records, "
            f"{large_loads[0].bytes} bytes); "
            f"ratio {large / small:.2f}; {rate:,.0f} commits/s; {len(rig.deleted)} ledgers dropped; "
            f"snapshots every {SNAPSHOT_RECORDS} records, bound {bound} records"
        )
        for load in small_loads + large_loads:
            assert load.records <= bound, f"replayed {load.records} records, more than the bound {bound}"
        assert rig.deleted, "snapshots let whole ledgers be dropped"
        assert large <= 2 * small, f"load after {total} commits took {large:.3f}s, after 10,000 {small:.3f}s"
    finally:
        await rig.close()


@pytest.mark.asyncio
async def test_replay_after_100k_commits_is_bounded(tmp_path: Path) -> None:
    await _run(tmp_path, 100_000)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_replay_after_one_million_commits_is_bounded(tmp_path: Path) -> None:
    await _run(tmp_path, 1_000_000)
