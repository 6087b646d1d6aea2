"""KIP-890 part 2 (transaction version 2): the epoch bumped by every EndTxn v5, markers at the bumped epoch, a
zombie's late write at the old epoch refused by the partition, epoch overflow onto a new producer id, the
implicit add of a partition by its leader, and KIP-360 / TV2 retries recognised after a replay of
``__transaction_state`` (the previous producer id/epoch are now persisted in TransactionLogValue v1's tagged
fields). The coordinator runs on a real Broker with the marker writer recorded (test_txn_coordinator's
fixture); the partition side runs on a real PartitionLog over in-memory ledgers.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest
from kio.schema.errors import ErrorCode

from brokers.broker import Broker
from brokers.codec import batch
from brokers.config import BrokerConfig
from brokers.log.partition import LogConfig, LogError, PartitionLog
from brokers.routing import Endpoint
from brokers.server import KafkaServer
from brokers.transactions import records as rec
from brokers.transactions import state as sm
from brokers.transactions.state import TxnMetadata, TxnState
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from tests.memory_ledgers import MemoryLedgerClient
from tests.unit.test_txn_coordinator import WAIT_S, ElsewhereRouting, Markers, _settled, env
from tests.unit.test_txn_state import txn_batch

__all__ = ["env"]  # the fixture, shared with test_txn_coordinator
TOP = sm.MAX_EPOCH - 1
"""The last epoch a client may use (Kafka keeps MAX_EPOCH for the coordinator's fence)."""


# --- the state machine (pure) -----------------------------------------------------------------


def test_every_end_bumps_the_epoch_and_a_retry_is_recognised() -> None:
    meta = TxnMetadata("x", 5, 2, 60_000, TxnState.EMPTY)
    for epoch in (2, 3, 4):
        added = sm.add_partitions(meta, 5, epoch, frozenset({("t", 0)}), 10, sm.TV_2)
        assert added.write is not None and added.write.client_version == sm.TV_2
        d = sm.end_txn(added.write, 5, epoch, commit=True, now=20, bump_epoch=True)
        assert d.error == ErrorCode.none and d.markers and d.write is not None
        prepared = d.write
        assert (prepared.state, prepared.producer_epoch, prepared.last_producer_epoch) == (
            TxnState.PREPARE_COMMIT, epoch + 1, epoch)
        assert sm.answer(prepared) == (5, epoch + 1)
        # the client's retry (its answer lost) carries the old epoch: busy while prepared, done once complete
        assert sm.end_txn(prepared, 5, epoch, True, 30, bump_epoch=True).error == ErrorCode.concurrent_transactions
        meta = sm.completed(prepared, 40)
        assert sm.end_txn(meta, 5, epoch, True, 50, bump_epoch=True).error == ErrorCode.none
        assert sm.end_txn(meta, 5, epoch, False, 50, bump_epoch=True).error == ErrorCode.invalid_txn_state
        # the old epoch can no longer add, verify or end anything else
        assert sm.add_partitions(meta, 5, epoch, frozenset({("t", 1)}), 60).error == ErrorCode.producer_fenced
        assert sm.verify_partition(meta, 5, epoch, ("t", 0)) == ErrorCode.producer_fenced
    assert meta.producer_epoch == 5


def test_tv0_end_keeps_the_epoch_and_the_kip360_previous_one() -> None:
    meta = TxnMetadata("x", 5, 3, 60_000, TxnState.ONGOING, frozenset({("t", 0)}), 1, 1, 5, 2)
    d = sm.end_txn(meta, 5, 3, commit=True, now=2)
    assert d.write is not None and (d.write.producer_epoch, d.write.last_producer_epoch) == (3, 2)
    assert d.write.client_version == sm.TV_0
    # KIP-360: the producer naming its current epoch gets it bumped (the current pair wins over the previous)
    done = sm.completed(d.write, 3)
    bumped = sm.init_producer(done, "x", None, 5, 3, 60_000, 4)
    assert bumped.write is not None and bumped.write.producer_epoch == 4


def test_a_tv2_abort_with_nothing_open_bumps_the_epoch() -> None:
    meta = TxnMetadata("x", 5, 2, 60_000, TxnState.COMPLETE_COMMIT)
    d = sm.end_txn(meta, 5, 2, commit=False, now=1, bump_epoch=True)
    assert d.write is not None and d.write.state == TxnState.PREPARE_ABORT and d.write.producer_epoch == 3
    assert d.write.partitions == frozenset()
    assert sm.end_txn(meta, 5, 2, commit=True, now=1, bump_epoch=True).error == ErrorCode.producer_fenced


def test_epoch_overflow_completes_onto_a_new_producer_id() -> None:
    meta = TxnMetadata("x", 5, TOP, 60_000, TxnState.ONGOING, frozenset({("t", 0)}), 1, 1)
    assert sm.end_needs_producer_id(meta, 5, TOP, bump_epoch=True)
    assert not sm.end_needs_producer_id(meta, 5, TOP, bump_epoch=False)
    with pytest.raises(ValueError, match="fresh producer id"):
        sm.end_txn(meta, 5, TOP, commit=True, now=2, bump_epoch=True)
    d = sm.end_txn(meta, 5, TOP, commit=True, now=2, bump_epoch=True, fresh_producer_id=77)
    prepared = d.write
    assert prepared is not None
    # the markers carry the old id at the coordinator's last epoch; the client is told the new id at epoch 0
    assert (prepared.producer_id, prepared.producer_epoch, prepared.next_producer_id) == (5, sm.MAX_EPOCH, 77)
    assert sm.answer(prepared) == (77, 0)
    assert sm.end_txn(prepared, 5, TOP, True, 3, bump_epoch=True).error == ErrorCode.concurrent_transactions
    done = sm.completed(prepared, 4)
    assert (done.producer_id, done.producer_epoch, done.next_producer_id) == (77, 0, sm.NO_PRODUCER_ID)
    assert (done.last_producer_id, done.last_producer_epoch) == (5, sm.MAX_EPOCH)
    assert sm.end_txn(done, 5, TOP, True, 5, bump_epoch=True).error == ErrorCode.none  # the retry, after it
    assert sm.answer(done) == (77, 0)
    assert sm.add_partitions(done, 5, TOP, frozenset({("t", 0)}), 6).error == ErrorCode.invalid_producer_id_mapping
    assert sm.add_partitions(done, 77, 0, frozenset({("t", 0)}), 6, sm.TV_2).error == ErrorCode.none


def test_a_fenced_producer_cannot_pass_for_a_retry() -> None:
    """The coordinator's fence (timeout, or a new producer) forgets the previous epoch, so the zombie's KIP-360
    InitProducerId or TV2 EndTxn retry with it is refused rather than handed the new epoch."""
    meta = TxnMetadata("x", 5, 2, 60_000, TxnState.ONGOING, frozenset({("t", 0)}), 1, 1)
    fenced = sm.completed(sm.fence_and_abort(meta, 2), 3)
    assert fenced.producer_epoch == 3
    assert sm.init_producer(fenced, "x", None, 5, 2, 60_000, 4).error == ErrorCode.producer_fenced
    assert sm.end_txn(fenced, 5, 2, False, 4, bump_epoch=True).error == ErrorCode.producer_fenced
    # a producer at the last epoch a client may use is still fenced: the coordinator's fence takes MAX_EPOCH
    last = sm.fence_and_abort(replace(meta, producer_epoch=TOP), 2)
    assert last.producer_epoch == sm.MAX_EPOCH and sm.needs_producer_id(sm.completed(last, 3))
    new = sm.init_producer(fenced, "x", None, -1, -1, 60_000, 5).write
    assert new is not None and (new.producer_epoch, new.last_producer_epoch) == (4, sm.NO_EPOCH)
    assert sm.init_producer(new, "x", None, 5, 3, 60_000, 6).error == ErrorCode.producer_fenced


# --- the record: TransactionLogValue v1 tagged fields, v0 still read ----------------------------


def test_value_v1_persists_the_previous_and_next_producer_and_the_client_version() -> None:
    value = rec.TxnValue(7, 4, 60_000, TxnState.PREPARE_COMMIT, frozenset({("a", 0)}), 9, 8, 7, 3, 99, 2, True)
    data = rec.encode_value(value)
    assert data[:2] == b"\x00\x01"
    back = rec.decode_value(data)
    assert back == value and back.tagged
    # defaults are left out of the tagged section, as Kafka's writer does
    plain = rec.TxnValue(7, 0, 60_000, TxnState.EMPTY, frozenset(), 9, -1)
    assert rec.encode_value(plain).endswith(b"\x00")
    assert rec.decode_value(rec.encode_value(plain)) == plain


def test_value_v0_and_unknown_tags_are_read() -> None:
    # a v0 record as Tidelog wrote it before (Kafka's TransactionLogValue v0)
    v0 = (b"\x00\x00" + (7).to_bytes(8, "big") + b"\x00\x03" + (60_000).to_bytes(4, "big") + b"\x01"
          + (1).to_bytes(4, "big") + b"\x00\x01a" + (1).to_bytes(4, "big") + (2).to_bytes(4, "big")
          + (5).to_bytes(8, "big") + (4).to_bytes(8, "big"))
    got = rec.decode_value(v0)
    assert (got.producer_id, got.producer_epoch, got.state, got.partitions) == (7, 3, TxnState.ONGOING,
                                                                               frozenset({("a", 2)}))
    assert not got.tagged and got.previous_producer_epoch == -1
    # a v1 record with a tag this reader does not know (a later Kafka's) is read, the tag skipped
    plain = rec.encode_value(rec.TxnValue(7, 3, 60_000, TxnState.EMPTY, frozenset(), 5, -1))
    assert plain[-1] == 0  # no tagged field
    with_tag = plain[:-1] + b"\x01" + b"\x2a\x01\xff"  # one tagged field: tag 42, one byte
    assert rec.decode_value(with_tag) == rec.decode_value(plain)


# --- the coordinator on a broker ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_tv2_transactions_bump_the_epoch_and_markers_carry_it(env: tuple[Broker, Markers]) -> None:
    b, markers = env
    txns = b.transactions
    init = await txns.init_producer_id("tv2", 60_000)
    pid, epoch = init.producer_id, init.producer_epoch
    for commit in (True, False, True):
        # the partition leader adds the partition on the first write (Produce v12): no AddPartitionsToTxn
        assert await txns.verify_partition("tv2", pid, epoch, "t", 1, add=True) == ErrorCode.none
        assert await txns.verify_partition("tv2", pid, epoch, "t", 2, add=True) == ErrorCode.none
        end = await txns.end_txn("tv2", pid, epoch, commit=commit, bump_epoch=True)
        assert (end.error, end.producer_id, end.producer_epoch) == (ErrorCode.none, pid, epoch + 1)
        await _settled(b, "tv2", TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT)
        coordinator_epoch = txns.shard_for("tv2").coordinator_epoch
        assert markers.calls[-1] == (pid, epoch + 1, commit, coordinator_epoch, (("t", 1), ("t", 2)))
        # the ended transaction's epoch is fenced: a zombie's late write cannot be added or verified
        assert await txns.verify_partition("tv2", pid, epoch, "t", 0, add=True) == ErrorCode.producer_fenced
        assert await txns.verify_partition("tv2", pid, epoch, "t", 1) == ErrorCode.producer_fenced
        epoch += 1
    meta = txns.describe("tv2")
    assert meta is not None and meta.client_version == sm.TV_2 and meta.last_producer_epoch == epoch - 1


@pytest.mark.asyncio
async def test_epoch_overflow_takes_a_new_producer_id(env: tuple[Broker, Markers]) -> None:
    b, markers = env
    txns = b.transactions
    init = await txns.init_producer_id("old", 60_000)
    pid = init.producer_id
    shard = txns.shard_for("old")
    meta = shard.txns["old"]
    await shard.write(replace(meta, producer_epoch=TOP), "old")  # as after 32,766 transactions
    assert await txns.verify_partition("old", pid, TOP, "t", 0, add=True) == ErrorCode.none
    end = await txns.end_txn("old", pid, TOP, commit=True, bump_epoch=True)
    assert end.error == ErrorCode.none and end.producer_id != pid and end.producer_epoch == 0
    done = await _settled(b, "old", TxnState.COMPLETE_COMMIT)
    assert (done.producer_id, done.producer_epoch) == (end.producer_id, 0)
    assert markers.calls[-1][:3] == (pid, sm.MAX_EPOCH, True)  # the old id's markers, at the fence epoch
    retry = await txns.end_txn("old", pid, TOP, commit=True, bump_epoch=True)
    assert (retry.error, retry.producer_id, retry.producer_epoch) == (ErrorCode.none, end.producer_id, 0)
    assert await txns.verify_partition("old", end.producer_id, 0, "t", 0, add=True) == ErrorCode.none
    assert await txns.verify_partition("old", pid, TOP, "t", 1, add=True) == ErrorCode.invalid_producer_id_mapping


@pytest.mark.asyncio
async def test_a_leader_elsewhere_adds_the_partition_with_add_partitions_v4(env: tuple[Broker, Markers]) -> None:
    """The implicit add from a partition leader that is not the coordinator: AddPartitionsToTxn v4+ without
    verify_only over a real socket, recorded as a TV2 transaction."""
    remote, _ = env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = KafkaServer(remote)
    await server.start("127.0.0.1", port)
    store = await EmbeddedMetadataStore.open(None)
    here = Broker(BrokerConfig(node_id=2, transaction_state_log_num_partitions=3), store, MemoryLedgerClient())
    try:
        await here.start()
        await here.transactions.ensure_topic()
        await here.topics.create("t", 3, 1, {})
        here.routing = ElsewhereRouting(Endpoint(1, "127.0.0.1", port))
        init = await remote.transactions.init_producer_id("far-tv2", 60_000)
        pid = init.producer_id
        assert await here.transactions.verify_partition("far-tv2", pid, 0, "t", 1) == ErrorCode.invalid_txn_state
        assert await here.transactions.verify_partition("far-tv2", pid, 0, "t", 1, add=True) == ErrorCode.none
        meta = remote.transactions.describe("far-tv2")
        assert meta is not None and meta.state == TxnState.ONGOING and meta.partitions == {("t", 1)}
        assert meta.client_version == sm.TV_2
        assert await here.transactions.verify_partition("far-tv2", pid, 1, "t", 2, add=True) == \
            ErrorCode.producer_fenced
    finally:
        await here.stop()
        await store.close()
        await server.stop()


async def _move(b: Broker, txn_id: str) -> None:
    """The id's ``__transaction_state`` partition released and taken again: a new owner replays it."""
    txns = b.transactions
    partition = txns.partition_for(txn_id)
    before = txns.shard_for(txn_id).coordinator_epoch
    await txns.on_released(partition)
    await b.logs.release(txns.topic_id, partition)
    txns.on_taken(partition)
    await txns.wait_loaded()
    assert txns.shard_for(txn_id).coordinator_epoch > before


@pytest.mark.asyncio
async def test_kip360_and_tv2_retries_are_recognised_after_a_replay(env: tuple[Broker, Markers]) -> None:
    b, _ = env
    txns = b.transactions
    init = await txns.init_producer_id("kip360", 60_000)
    pid = init.producer_id
    bumped = await txns.init_producer_id("kip360", 60_000, pid, 0)  # KIP-360: bump with the current epoch
    assert (bumped.error, bumped.producer_epoch) == (ErrorCode.none, 1)
    await _move(b, "kip360")
    # the producer lost that answer and asks again with epoch 0: the replayed state knows it was a retry
    again = await txns.init_producer_id("kip360", 60_000, pid, 0)
    assert (again.error, again.producer_id, again.producer_epoch) == (ErrorCode.none, pid, 1)
    # a TV2 transaction whose EndTxn answer is lost, the coordinator moving before the retry
    assert await txns.verify_partition("kip360", pid, 1, "t", 0, add=True) == ErrorCode.none
    assert (await txns.end_txn("kip360", pid, 1, commit=True, bump_epoch=True)).producer_epoch == 2
    await _settled(b, "kip360", TxnState.COMPLETE_COMMIT)
    await _move(b, "kip360")
    meta = txns.describe("kip360")
    assert meta is not None and (meta.last_producer_id, meta.last_producer_epoch) == (pid, 1)
    assert meta.client_version == sm.TV_2
    retry = await txns.end_txn("kip360", pid, 1, commit=True, bump_epoch=True)
    assert (retry.error, retry.producer_epoch) == (ErrorCode.none, 2)


@pytest.mark.asyncio
async def test_an_overflow_prepared_before_a_move_completes_onto_the_new_id(env: tuple[Broker, Markers]) -> None:
    b, markers = env
    txns = b.transactions
    init = await txns.init_producer_id("flow", 60_000)
    pid = init.producer_id
    shard = txns.shard_for("flow")
    await shard.write(replace(shard.txns["flow"], producer_epoch=TOP), "flow")
    assert await txns.verify_partition("flow", pid, TOP, "t", 2, add=True) == ErrorCode.none
    markers.hold = asyncio.Event()  # the markers do not land before the partition moves
    end = await txns.end_txn("flow", pid, TOP, commit=False, bump_epoch=True)
    assert end.error == ErrorCode.none and end.producer_epoch == 0
    async with asyncio.timeout(WAIT_S):
        while not markers.calls:
            await asyncio.sleep(0.01)
    markers.hold.set()
    markers.hold = None
    await _move(b, "flow")  # the next owner finds PrepareAbort with the next producer id (tag 1) and completes
    done = await _settled(b, "flow", TxnState.COMPLETE_ABORT)
    assert (done.producer_id, done.producer_epoch) == (end.producer_id, 0)
    assert markers.calls[-1][:3] == (pid, sm.MAX_EPOCH, False)


# --- the partition side -------------------------------------------------------------------------


async def _append(plog: PartitionLog, data: bytes) -> int:
    return (await (await plog.append(data, batch.validate(data)))).base_offset


@pytest.mark.asyncio
async def test_the_partition_refuses_the_old_epoch_and_waits_for_the_marker() -> None:
    store = await EmbeddedMetadataStore.open(None)
    plog = PartitionLog(store, Keys("t"), MemoryLedgerClient(), "tid", 0, LogConfig())
    await plog.load()
    await _append(plog, txn_batch(10, epoch=3, seq=0))  # transaction at epoch 3 open here
    # the producer's next transaction (epoch 4 after EndTxn v5) arrives before the marker: refused retriably,
    # it must not join the transaction the marker is about to end
    with pytest.raises(LogError) as refused:
        await _append(plog, txn_batch(10, epoch=4, seq=0))
    assert refused.value.code == ErrorCode.not_enough_replicas
    await (await plog.write_marker(10, 4, True, 1))  # the commit marker, at the bumped epoch
    assert plog.ongoing_transactions() == {}
    # the zombie's late write of the committed transaction (epoch 3) is refused, nothing opened
    with pytest.raises(LogError) as fenced:
        await _append(plog, txn_batch(10, epoch=3, seq=2))
    assert fenced.value.code == ErrorCode.invalid_producer_epoch
    assert plog.ongoing_transactions() == {}
    # the next transaction at epoch 4 starts at sequence 0 and is taken
    offset = await _append(plog, txn_batch(10, epoch=4, seq=0))
    assert plog.ongoing_transactions() == {10: offset}
    await plog.close()
    await store.close()
