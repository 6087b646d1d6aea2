"""Transactional offsets in a GroupShard (in-memory ledgers): pending until the marker, commit/abort, replay of
transactional and control batches, require_stable, fencing, and snapshots that wait for pending transactions."""

from __future__ import annotations

import struct

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.broker import Broker
from brokers.codec.batch import CONTROL_FLAG, TRANSACTIONAL_FLAG, iter_headers
from brokers.codec.builder import build_batch
from brokers.config import BrokerConfig
from brokers.groups import offsets
from brokers.groups import records as rec
from brokers.groups.base import GroupConfig, GroupError
from brokers.groups.classic import ClassicGroup
from brokers.groups.shard import GroupShard
from brokers.groups.txn_offsets import ControlRecordError, control_type
from brokers.log.partition import LogConfig, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from tests.memory_ledgers import MemoryLedgerClient

KEYS = Keys("t")
PID, EPOCH = 4000, 3


class Env:
    def __init__(self, store: EmbeddedMetadataStore) -> None:
        self.store = store
        self.ledgers = MemoryLedgerClient()

    async def shard(self, snapshot_records: int = 10_000) -> GroupShard:
        plog = PartitionLog(self.store, KEYS, self.ledgers, "offsets", 0, LogConfig(rollover_bytes=64 * 1024))
        await plog.load()
        shard = GroupShard(0, plog, GroupConfig(snapshot_records=snapshot_records))
        await shard.load()
        return shard


@pytest_asyncio.fixture
async def env() -> Env:
    return Env(await EmbeddedMetadataStore.open(None))


def _req(topic: str, partition: int, offset: int) -> offsets.CommitRequest:
    return offsets.CommitRequest(topic, partition, offset, -1, f"m{offset}")


def _plain(group: str, topic: str, partition: int, offset: int) -> tuple[bytes, bytes]:
    value = rec.OffsetValue(offset, -1, "", offset)
    return rec.encode_offset_key(group, topic, partition), rec.encode_offset_value(value)


def _exists(_topic: str, _partition: int) -> bool:
    return True


async def _txn_commit(shard: GroupShard, group: str, reqs: list[offsets.CommitRequest], pid: int = PID,
                      epoch: int = EPOCH, generation: int = -1, member: str = "") -> list[ErrorCode]:
    return await offsets.txn_commit(shard, group, member, None, generation, (pid, epoch), reqs, _exists, 3)


async def _marker(shard: GroupShard, pid: int, commit: bool, epoch: int = EPOCH) -> None:
    """A transaction marker as brokers/txn_markers.py writes it, then the call it makes once it is durable."""
    await (await shard.plog.write_marker(pid, epoch, commit, 7))
    shard.complete_transaction(pid, commit)


async def _raw_marker(shard: GroupShard, pid: int, kind: int) -> None:
    """A control batch built by hand (any control type), appended without telling the shard."""
    key = struct.pack(">hh", 0, kind)
    batch = build_batch([(key, struct.pack(">hi", 0, 7))], 1, pid, EPOCH, TRANSACTIONAL_FLAG | CONTROL_FLAG)
    await (await shard.plog.append(batch, iter_headers(batch)))


async def _fetch(shard: GroupShard, group: str, stable: bool) -> dict[tuple[str, int], tuple[int, ErrorCode]]:
    got = await offsets.fetch(shard, group, [("t", [0, 1, 2])], require_stable=stable)
    return {(f.topic, f.partition): (f.offset, f.error) for f in got}


def _offsets(shard: GroupShard, group: str) -> dict[tuple[str, int], int]:
    return {tp: c.offset for tp, c in shard.offsets.get(group, {}).items()}


def _shutdown(*shards: GroupShard) -> None:
    for shard in shards:
        for g in shard.groups.values():
            g.shutdown()


@pytest.mark.asyncio
async def test_pending_offsets_are_invisible_until_commit_and_dropped_on_abort(env: Env) -> None:
    shard = await env.shard()
    await shard.write([_plain("g", "t", 0, 1)])
    assert await _txn_commit(shard, "g", [_req("t", 0, 10), _req("t", 1, 11)]) == [ErrorCode.none] * 2
    assert _offsets(shard, "g") == {("t", 0): 1}
    assert await _fetch(shard, "g", stable=False) == {
        ("t", 0): (1, ErrorCode.none), ("t", 1): (-1, ErrorCode.none), ("t", 2): (-1, ErrorCode.none)
    }
    assert await _fetch(shard, "g", stable=True) == {
        ("t", 0): (-1, ErrorCode.unstable_offset_commit), ("t", 1): (-1, ErrorCode.unstable_offset_commit),
        ("t", 2): (-1, ErrorCode.none),
    }
    await _marker(shard, PID, commit=True)
    assert _offsets(shard, "g") == {("t", 0): 10, ("t", 1): 11}
    assert (await _fetch(shard, "g", stable=True))[("t", 1)] == (11, ErrorCode.none)

    assert await _txn_commit(shard, "g", [_req("t", 0, 20)]) == [ErrorCode.none]
    await _marker(shard, PID, commit=False)
    assert _offsets(shard, "g") == {("t", 0): 10, ("t", 1): 11}
    assert (await _fetch(shard, "g", stable=True))[("t", 0)] == (10, ErrorCode.none)
    assert not shard.pending_txn
    _shutdown(shard)


@pytest.mark.asyncio
async def test_replay_with_control_batches_rebuilds_committed_aborted_and_still_pending(env: Env) -> None:
    shard = await env.shard()
    await _txn_commit(shard, "a", [_req("t", 0, 5)], pid=1)
    await _txn_commit(shard, "b", [_req("t", 0, 6)], pid=2)
    await _txn_commit(shard, "c", [_req("t", 2, 7)], pid=3)  # never ended
    await _marker(shard, 2, commit=False)
    await _marker(shard, 1, commit=True)
    await _marker(shard, 99, commit=True)  # a producer with nothing here: no effect
    await _raw_marker(shard, 3, kind=5)  # an unknown control type (not a transaction marker): ignored
    again = await env.shard()  # a new owner (coordinator move, restart) replays the partition
    for s in (shard, again):
        assert _offsets(s, "a") == {("t", 0): 5}
        assert "b" not in s.offsets
        assert "c" not in s.offsets
        assert isinstance(s.groups["a"], ClassicGroup)
        assert (await _fetch(s, "c", stable=True))[("t", 2)] == (-1, ErrorCode.unstable_offset_commit)
    assert again.last_load is not None
    again.complete_transaction(3, commit=True)  # the marker arrives after the move
    assert _offsets(again, "c") == {("t", 2): 7}
    assert isinstance(again.groups["c"], ClassicGroup)
    _shutdown(shard, again)


@pytest.mark.asyncio
async def test_a_plain_commit_written_after_the_txn_offset_wins_at_commit(env: Env) -> None:
    shard = await env.shard()
    await _txn_commit(shard, "g", [_req("t", 0, 50), _req("t", 1, 51)])
    assert await offsets.commit(shard, "g", "", None, -1, [_req("t", 0, 60)], _exists, 8) == [ErrorCode.none]
    await _marker(shard, PID, commit=True)
    assert _offsets(shard, "g") == {("t", 0): 60, ("t", 1): 51}  # Kafka's rule: the later record wins
    again = await env.shard()
    assert _offsets(again, "g") == {("t", 0): 60, ("t", 1): 51}
    _shutdown(shard, again)


@pytest.mark.asyncio
async def test_a_tombstone_drops_the_pending_offsets_of_its_partition(env: Env) -> None:
    shard = await env.shard()
    await _txn_commit(shard, "g", [_req("t", 0, 5), _req("t", 1, 6)])
    await _txn_commit(shard, "h", [_req("t", 0, 7)], pid=PID + 1)
    await shard.write([(rec.encode_offset_key("g", "t", 0), None)])  # OffsetDelete, DeleteGroups, expiry
    assert (await _fetch(shard, "g", stable=True))[("t", 0)] == (-1, ErrorCode.none)
    await shard.write([(rec.encode_offset_key("h", "t", 0), None)])
    assert set(shard.pending_txn.by_producer) == {PID}, "a producer left with nothing pending is forgotten"
    await _marker(shard, PID, commit=True)
    await _marker(shard, PID + 1, commit=True)
    for s in (shard, await env.shard()):
        assert _offsets(s, "g") == {("t", 1): 6}
        assert "h" not in s.offsets
    _shutdown(shard)


@pytest.mark.asyncio
async def test_kip890_a_marker_between_verification_and_append_refuses_the_write(env: Env) -> None:
    shard = await env.shard()
    asked: list[int] = []

    async def verified() -> ErrorCode:
        asked.append(1)
        return ErrorCode.none

    async def verified_then_ended() -> ErrorCode:  # the transaction ends while the request is on its way
        asked.append(2)
        await _marker(shard, PID, commit=False)
        return ErrorCode.none

    async def refused() -> ErrorCode:
        asked.append(3)
        return ErrorCode.invalid_txn_state

    reqs = [_req("t", 0, 1)]
    assert await offsets.txn_commit(shard, "g", "", None, -1, (PID, EPOCH), reqs, _exists, 3, refused) == [
        ErrorCode.invalid_txn_state
    ]
    assert await offsets.txn_commit(shard, "g", "", None, -1, (PID, EPOCH), reqs, _exists, 3,
                                    verified_then_ended) == [ErrorCode.invalid_txn_state]
    assert not shard.pending_txn, "nothing left pending that no marker would end"
    assert await offsets.txn_commit(shard, "g", "", None, -1, (PID, EPOCH), reqs, _exists, 3, verified) == [
        ErrorCode.none
    ]
    assert await offsets.txn_commit(shard, "g", "", None, -1, (PID, EPOCH), [_req("t", 1, 2)], _exists, 3,
                                    refused) == [ErrorCode.none], "open on the partition: no verification"
    assert asked == [3, 2, 1]
    await _marker(shard, PID, commit=True)
    assert _offsets(shard, "g") == {("t", 0): 1, ("t", 1): 2}
    _shutdown(shard)


@pytest.mark.asyncio
async def test_older_producer_epoch_is_fenced(env: Env) -> None:
    shard = await env.shard()
    assert await _txn_commit(shard, "g", [_req("t", 0, 1)], epoch=5) == [ErrorCode.none]
    assert await _txn_commit(shard, "g", [_req("t", 0, 2)], epoch=4) == [ErrorCode.invalid_producer_epoch]
    again = await env.shard()  # the epoch is known after replay too
    with pytest.raises(GroupError) as err:
        await again.write_transactional(PID, 4, [])
    assert err.value.code is ErrorCode.invalid_producer_epoch
    _shutdown(shard, again)


@pytest.mark.asyncio
async def test_group_membership_is_checked_as_offset_commit_checks_it(env: Env) -> None:
    shard = await env.shard()
    assert await _txn_commit(shard, "nogroup", [_req("t", 0, 1)], generation=2, member="m") == [
        ErrorCode.illegal_generation
    ]
    assert "nogroup" not in shard.groups
    assert await _txn_commit(shard, "simple", [_req("t", 0, 1)]) == [ErrorCode.none]  # v0-v2: no member
    assert "simple" not in shard.offsets
    big = offsets.CommitRequest("t", 1, 1, -1, "x" * (shard.config.offset_metadata_max_bytes + 1))
    assert await _txn_commit(shard, "simple", [big]) == [ErrorCode.offset_metadata_too_large]
    _shutdown(shard)


@pytest.mark.asyncio
async def test_snapshot_waits_until_nothing_is_pending(env: Env) -> None:
    shard = await env.shard(snapshot_records=5)
    for i in range(10):
        await shard.write([_plain("g", "t", 0, i)])
    if shard._snapshot_task is not None:
        await shard._snapshot_task
    done = shard.snapshots
    await _txn_commit(shard, "g", [_req("t", 1, 100)])
    for i in range(10):
        await shard.write([_plain("g", "t", 0, i)])
    await shard.snapshot()
    assert shard.snapshots == done, "no snapshot while a transaction's offsets are pending"
    start = shard.plog.log_start_offset
    await _marker(shard, PID, commit=True)
    if shard._snapshot_task is not None:
        await shard._snapshot_task
    assert shard.snapshots == done + 1 and shard.plog.log_start_offset > start
    again = await env.shard()
    assert _offsets(again, "g") == {("t", 0): 9, ("t", 1): 100}
    assert not again.pending_txn
    _shutdown(shard, again)


def test_control_record_key() -> None:
    assert control_type(struct.pack(">hh", 0, 1)) == 1
    assert control_type(struct.pack(">hh", 0, 0)) == 0
    with pytest.raises(ControlRecordError):
        control_type(b"\x00")
    with pytest.raises(ControlRecordError):
        control_type(None)


@pytest.mark.asyncio
async def test_coordinator_completes_on_the_offsets_partition_and_waits_for_a_loading_shard() -> None:
    store = await EmbeddedMetadataStore.open(None)
    b = Broker(BrokerConfig(node_id=1, offsets_topic_num_partitions=3, group_initial_rebalance_delay_ms=0), store,
               MemoryLedgerClient())
    await b.start()
    try:
        await b.groups.wait_loaded()
        await b.topics.create("t", 3, 1, {})
        groups = b.groups
        partition = groups.partition_for("g")
        assert await groups.commit_txn_offsets("g", "", None, -1, (PID, EPOCH), [_req("t", 0, 10)], 3) == [
            ErrorCode.none
        ]
        fetched = await groups.fetch_offsets("g", [("t", [0])], require_stable=True)
        assert [(f.offset, f.error) for f in fetched] == [(-1, ErrorCode.unstable_offset_commit)]
        await groups.complete_transaction((partition + 1) % 3, PID, commit=True)  # another partition: no effect
        assert [f.offset for f in await groups.fetch_offsets("g", [("t", [0])])] == [-1]
        await groups.complete_transaction(partition, PID, commit=True)
        assert [f.offset for f in await groups.fetch_offsets("g", [("t", [0])], require_stable=True)] == [10]

        await groups.commit_txn_offsets("g", "", None, -1, (PID, EPOCH), [_req("t", 1, 11)], 3)
        await groups.on_released(partition)  # the shard is reloaded (a move back, a retried load) ...
        groups.on_taken(partition)
        await groups.complete_transaction(partition, PID, commit=True)  # ... and the marker's call waits for it
        fetched = await groups.fetch_offsets("g", [("t", [0, 1])], require_stable=True)
        assert [(f.offset, f.error) for f in fetched] == [(10, ErrorCode.none), (11, ErrorCode.none)]
        assert await groups.commit_txn_offsets("g", "", None, 3, (PID, EPOCH), [_req("t", 2, 1)], 3) == [
            ErrorCode.unknown_member_id  # a generation names a member: a simple group has none
        ]
        # DeleteGroups tombstones the partitions with only pending offsets too: the later COMMIT brings none back
        await groups.commit_txn_offsets("g", "", None, -1, (PID, EPOCH), [_req("t", 2, 12)], 3)
        assert await groups.delete_group("g") == ErrorCode.none
        await groups.complete_transaction(partition, PID, commit=True)
        assert [f.offset for f in await groups.fetch_offsets("g", [("t", [0, 1, 2])])] == [-1, -1, -1]
    finally:
        await b.stop()
        await store.close()
