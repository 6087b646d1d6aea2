"""GroupShard over one partition log (in-memory ledgers): durable writes, replay, snapshots, extensions."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.codec.batch import iter_headers
from brokers.codec.builder import build_batch
from brokers.groups import records as rec
from brokers.groups.base import GroupConfig, GroupError
from brokers.groups.classic import ClassicGroup, GroupState
from brokers.groups.shard import GroupShard
from brokers.log.partition import LogConfig, LogError, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from tests.memory_ledgers import MemoryLedgerClient

KEYS = Keys("t")


class Env:
    def __init__(self, store: EmbeddedMetadataStore) -> None:
        self.store = store
        self.ledgers = MemoryLedgerClient()
        self.deleted: list[int] = []

    async def shard(self, snapshot_records: int = 10_000, rollover_bytes: int = 64 * 1024) -> GroupShard:
        plog = PartitionLog(self.store, KEYS, self.ledgers, "offsets", 0, LogConfig(rollover_bytes=rollover_bytes))
        await plog.load()
        shard = GroupShard(0, plog, GroupConfig(snapshot_records=snapshot_records), self.deleted.extend)
        await shard.load()
        return shard


@pytest_asyncio.fixture
async def env() -> Env:
    return Env(await EmbeddedMetadataStore.open(None))


def _commit(group: str, topic: str, partition: int, offset: int) -> tuple[bytes, bytes]:
    value = rec.OffsetValue(offset, -1, f"m{offset}", 1000 + offset)
    return rec.encode_offset_key(group, topic, partition), rec.encode_offset_value(value)


@pytest.mark.asyncio
async def test_writes_apply_once_durable_and_replay_rebuilds_them(env: Env) -> None:
    shard = await env.shard()
    base = await shard.write([_commit("g", "t", 0, 5), _commit("g", "t", 1, 7)])
    assert base == 0
    assert shard.offsets["g"][("t", 0)].offset == 5
    group_value = rec.GroupValue("consumer", 3, "range", "m1", 99, (
        rec.MemberMetadata("m1", None, "c", "/h", 3000, 6000, b"sub", b"asg"),
    ))
    await shard.write([(rec.encode_group_key("g"), rec.encode_group_value(group_value))])
    await shard.write([_commit("g", "t", 0, 9), (rec.encode_offset_key("g", "t", 1), None)])
    await shard.write([_commit("other", "t", 0, 1)])
    await shard.write([(rec.encode_offset_key("other", "t", 0), None)])

    again = await env.shard()  # a new owner replays the partition
    assert {tp: c.offset for tp, c in again.offsets["g"].items()} == {("t", 0): 9}
    assert "other" not in again.offsets
    assert again.classic_values == {"g": group_value}
    group = again.groups["g"]
    assert isinstance(group, ClassicGroup)
    assert group.state is GroupState.STABLE and group.generation == 3 and group.leader_id == "m1"
    assert group.members["m1"].assignment == b"asg"
    assert again.last_load is not None and again.last_load.records == 7
    for g in again.groups.values():
        g.shutdown()


@pytest.mark.asyncio
async def test_a_failed_write_applies_nothing(env: Env) -> None:
    shard = await env.shard()
    await shard.write([_commit("g", "t", 0, 1)])

    async def refuse(*_a: object) -> None:
        raise LogError(ErrorCode.not_leader_or_follower, "no")

    shard.plog.append = refuse  # type: ignore[method-assign]
    with pytest.raises(GroupError) as err:
        await shard.write([_commit("g", "t", 0, 2)])
    assert err.value.code is ErrorCode.not_coordinator
    assert shard.offsets["g"][("t", 0)].offset == 1


@pytest.mark.asyncio
async def test_snapshots_bound_replay_by_live_state(env: Env) -> None:
    k = 200
    shard = await env.shard(snapshot_records=k, rollover_bytes=8 * 1024)
    for i in range(5_000):  # 5,000 commits over 20 live partitions
        await shard.write([_commit("g", "t", i % 20, i)])
    while shard._snapshot_task is not None and not shard._snapshot_task.done():
        await shard._snapshot_task
    assert shard.snapshots >= 5_000 // k - 1
    assert shard.plog.log_start_offset > 4_000
    assert env.deleted, "ledgers wholly below the snapshot are handed back for deletion"
    again = await env.shard(snapshot_records=k)
    assert again.last_load is not None
    assert again.last_load.records <= 20 + k + 1  # one snapshot (20 live records) plus at most K more
    assert {p: c.offset for (_t, p), c in again.offsets["g"].items()} == {p: 4_980 + p for p in range(20)}


@pytest.mark.asyncio
async def test_crash_between_snapshot_and_start_move_is_harmless(env: Env) -> None:
    shard = await env.shard(snapshot_records=1_000_000)
    await shard.write([_commit("g", "t", 0, 1), _commit("g", "t", 1, 1)])
    await shard.write([(rec.encode_offset_key("g", "t", 1), None)])  # deleted before the snapshot
    await shard.write([_commit("g", "t", 0, 2)])

    async def crash(_offset: int) -> list[int]:
        raise LogError(ErrorCode.not_leader_or_follower, "broker died before moving the start offset")

    shard.plog.advance_start = crash  # type: ignore[method-assign]
    await shard.snapshot()
    assert shard.plog.log_start_offset == 0 and shard.snapshots == 0
    await shard.write([_commit("g", "t", 0, 3)])
    again = await env.shard()  # replays old records, the snapshot, and what came after: last write wins
    assert {tp: c.offset for tp, c in again.offsets["g"].items()} == {("t", 0): 3}


@pytest.mark.asyncio
async def test_replay_skips_records_it_cannot_read(env: Env) -> None:
    shard = await env.shard()
    await shard.write([_commit("g", "t", 0, 1)])
    junk = build_batch([(b"\x00", b"x"), (rec.encode_offset_key("g", "t", 0), b"\x00\x03")], 1)
    await (await shard.plog.append(junk, iter_headers(junk)))
    await shard.write([_commit("g", "t", 1, 4)])
    again = await env.shard()
    assert {tp: c.offset for tp, c in again.offsets["g"].items()} == {("t", 0): 1, ("t", 1): 4}


class _Ext:
    """A stand-in for KIP-848 records (key version 3): replayed and re-written by snapshots."""

    def __init__(self, shard: GroupShard) -> None:
        self.shard = shard
        self.values: dict[bytes, bytes] = {}
        self.loaded_calls = 0

    def handles(self, key_version: int) -> bool:
        return key_version == 3

    def replay(self, key: rec.UnknownKey, value: bytes | None, log_offset: int) -> None:
        if value is None:
            self.values.pop(key.data, None)
        else:
            self.values[key.data] = value

    def snapshot_records(self) -> list[tuple[bytes, bytes | None]]:
        return list(self.values.items())

    def loaded(self) -> None:
        self.loaded_calls += 1


@pytest.mark.asyncio
async def test_extensions_replay_their_records_and_join_snapshots(env: Env) -> None:
    plog = PartitionLog(env.store, KEYS, env.ledgers, "offsets", 0, LogConfig())
    await plog.load()
    shard = GroupShard(0, plog, GroupConfig(snapshot_records=3), None, [_Ext])
    await shard.load()
    key = b"\x00\x03" + b"\x00\x01g"
    await shard.write([(key, b"consumer-group-state")])
    for i in range(4):
        await shard.write([_commit("g", "t", 0, i)])
    while shard._snapshot_task is not None and not shard._snapshot_task.done():
        await shard._snapshot_task
    assert shard.snapshots >= 1 and plog.log_start_offset > 1  # the extension's record is before the start now

    plog2 = PartitionLog(env.store, KEYS, env.ledgers, "offsets", 0, LogConfig())
    await plog2.load()
    again = GroupShard(0, plog2, GroupConfig(), None, [_Ext])
    await again.load()
    ext = again.extensions[0]
    assert isinstance(ext, _Ext)
    assert ext.values == {key: b"consumer-group-state"} and ext.loaded_calls == 1


@pytest.mark.asyncio
async def test_offset_retention_tombstones(env: Env) -> None:
    shard = await env.shard()
    await shard.write([_commit("simple", "t", 0, 1)])  # commit timestamp 1001
    shard.groups["simple"] = ClassicGroup("simple", shard)
    assert shard.expired_offsets(now=2000, retention_ms=5000) == []
    out = shard.expired_offsets(now=10_000, retention_ms=5000)
    assert (rec.encode_offset_key("simple", "t", 0), None) in out
    assert (rec.encode_group_key("simple"), None) in out
    await asyncio.sleep(0)
