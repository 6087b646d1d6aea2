"""The transaction coordinator on a real Broker (in-memory metadata and ledgers): the state machine, fencing,
timeouts, expiration, replay of ``__transaction_state`` by a new owner, and the record formats.

The partition side of markers (brokers/txn_markers.py) is replaced by a recorder here, so these tests see
exactly which markers the coordinator sends, with which epochs; tests/e2e/test_txn_coordinator_wire.py runs
the real path in a broker process.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.broker import Broker
from brokers.config import BrokerConfig
from brokers.log.partition import LogConfig, PartitionLog
from brokers.routing import Endpoint, Leader
from brokers.server import KafkaServer
from brokers.transactions import records as rec
from brokers.transactions import state as sm
from brokers.transactions.shard import TxnShard
from brokers.transactions.state import TxnMetadata, TxnState
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from tests.memory_ledgers import MemoryLedgerClient

TP = tuple[str, int]
WAIT_S = 30.0  # a hang guard, never a timing assertion


@dataclass
class Markers:
    """Stands in for brokers.txn_markers.write_markers: records every call; ``hold`` makes calls wait."""

    calls: list[tuple[int, int, bool, int, tuple[TP, ...]]] = field(default_factory=list)
    hold: asyncio.Event | None = None
    answer: ErrorCode = ErrorCode.none

    async def __call__(
        self, broker: Broker, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int,
        partitions: Sequence[TP],
    ) -> dict[TP, ErrorCode]:
        self.calls.append((producer_id, producer_epoch, commit, coordinator_epoch, tuple(partitions)))
        if self.hold is not None:
            await self.hold.wait()
        return dict.fromkeys(partitions, self.answer)


@pytest_asyncio.fixture
async def env() -> AsyncIterator[tuple[Broker, Markers]]:
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(
        node_id=1, offsets_topic_num_partitions=2, transaction_state_log_num_partitions=3,
        group_initial_rebalance_delay_ms=0, transaction_abort_timed_out_transaction_cleanup_interval_ms=3_600_000,
    )
    b = Broker(config, store, MemoryLedgerClient())
    markers = Markers()
    b.transactions.markers.local = markers
    await b.start()
    assert b.transactions.partitions == 0  # created on first use
    assert (await b.transactions.init_producer_id("first", 60_000)).error == ErrorCode.coordinator_load_in_progress
    await b.transactions.wait_loaded()
    await b.topics.create("t", 3, 1, {})
    try:
        yield b, markers
    finally:
        await b.stop()
        await store.close()


async def _settled(b: Broker, txn_id: str, state: TxnState) -> TxnMetadata:
    """Wait until the id reaches ``state`` (markers complete in the background)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            meta = b.transactions.describe(txn_id)
            if meta is not None and meta.state == state and txn_id not in b.transactions.shard_for(txn_id).pending:
                return meta
            await asyncio.sleep(0.01)


# --- records -----------------------------------------------------------------------------------


def test_records_round_trip_in_kafkas_layout() -> None:
    value = rec.TxnValue(7, 3, 60_000, TxnState.ONGOING, frozenset({("a", 1), ("a", 0), ("b", 2)}), 1234, 1000)
    assert rec.decode_value(rec.encode_value(value)) == value
    assert rec.decode_key(rec.encode_key("my-id")) == "my-id"
    encoded = rec.encode_value(value)
    # version 1, producer id 7, epoch 3, timeout 60000, status 1 (Ongoing), then 2 topics (compact array: 2 + 1)
    assert encoded[:17] == b"\x00\x01" + (7).to_bytes(8, "big") + b"\x00\x03" + (60_000).to_bytes(4, "big") + b"\x01"
    assert encoded[17] == 3
    with pytest.raises(rec.RecordFormatError):
        rec.decode_value(encoded[:10])


# --- the state machine (pure) -----------------------------------------------------------------


def test_end_txn_answers_kafkas_state_table() -> None:
    base = TxnMetadata("x", 5, 2, 60_000, TxnState.ONGOING, frozenset({("t", 0)}), 100, 100)
    prepared = sm.end_txn(base, 5, 2, commit=True, now=200)
    assert prepared.error == ErrorCode.none and prepared.markers
    assert prepared.write is not None and prepared.write.state == TxnState.PREPARE_COMMIT
    on = {s: sm.TxnMetadata("x", 5, 2, 60_000, s) for s in TxnState}
    assert sm.end_txn(on[TxnState.PREPARE_COMMIT], 5, 2, True, 1).error == ErrorCode.concurrent_transactions
    assert sm.end_txn(on[TxnState.PREPARE_COMMIT], 5, 2, False, 1).error == ErrorCode.invalid_txn_state
    assert sm.end_txn(on[TxnState.COMPLETE_COMMIT], 5, 2, True, 1).error == ErrorCode.none  # a retry
    assert sm.end_txn(on[TxnState.COMPLETE_ABORT], 5, 2, True, 1).error == ErrorCode.invalid_txn_state
    assert sm.end_txn(on[TxnState.EMPTY], 5, 2, True, 1).error == ErrorCode.invalid_txn_state
    assert sm.end_txn(base, 5, 1, True, 1).error == ErrorCode.producer_fenced
    assert sm.end_txn(base, 6, 2, True, 1).error == ErrorCode.invalid_producer_id_mapping
    assert sm.end_txn(None, 6, 2, True, 1).error == ErrorCode.invalid_producer_id_mapping


def test_end_txn_v5_bumps_the_epoch_and_recognises_its_retry() -> None:
    base = TxnMetadata("x", 5, 2, 60_000, TxnState.ONGOING, frozenset({("t", 0)}), 100, 100)
    d = sm.end_txn(base, 5, 2, commit=False, now=200, bump_epoch=True)
    assert d.write is not None and d.write.producer_epoch == 3 and d.write.state == TxnState.PREPARE_ABORT
    done = sm.completed(d.write, 300)
    assert sm.end_txn(done, 5, 2, commit=False, now=400, bump_epoch=True).error == ErrorCode.none
    # the retry's epoch with the other outcome: Kafka's TransactionCoordinator answers INVALID_TXN_STATE
    assert sm.end_txn(done, 5, 2, commit=True, now=400, bump_epoch=True).error == ErrorCode.invalid_txn_state


def test_an_exhausted_epoch_takes_a_new_producer_id() -> None:
    meta = TxnMetadata("x", 5, sm.MAX_EPOCH - 1, 60_000, TxnState.COMPLETE_COMMIT)
    assert sm.needs_producer_id(meta)
    d = sm.init_producer(meta, "x", 99, -1, -1, 30_000, 1)
    assert d.write is not None and (d.write.producer_id, d.write.producer_epoch) == (99, 0)
    # a new producer (no id in the request) fences every earlier epoch: none is kept for a KIP-360 retry (Kafka)
    assert (d.write.last_producer_id, d.write.last_producer_epoch) == (5, sm.NO_EPOCH)
    d = sm.init_producer(meta, "x", 99, 5, sm.MAX_EPOCH - 1, 30_000, 1)  # KIP-360: the producer names its epoch
    assert d.write is not None and (d.write.last_producer_id, d.write.last_producer_epoch) == (5, sm.MAX_EPOCH - 1)


# --- the coordinator ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_commit_writes_markers_with_the_partitions_leader_epoch(env: tuple[Broker, Markers]) -> None:
    b, markers = env
    txns = b.transactions
    init = await txns.init_producer_id("app-1", 60_000)
    assert init.error == ErrorCode.none and init.producer_epoch == 0
    pid = init.producer_id
    assert await txns.add_partitions("app-1", pid, 0, [("t", 0), ("t", 1)]) == {
        ("t", 0): ErrorCode.none, ("t", 1): ErrorCode.none}
    assert await txns.verify_partition("app-1", pid, 0, "t", 1) == ErrorCode.none
    assert await txns.verify_partition("app-1", pid, 0, "t", 2) == ErrorCode.invalid_txn_state
    assert await txns.add_offsets("app-1", pid, 0, "group-a") == ErrorCode.none
    meta = txns.describe("app-1")
    assert meta is not None and meta.state == TxnState.ONGOING and len(meta.partitions) == 3
    end = await txns.end_txn("app-1", pid, 0, commit=True)
    assert end.error == ErrorCode.none
    done = await _settled(b, "app-1", TxnState.COMPLETE_COMMIT)
    assert done.partitions == frozenset()
    shard = txns.shard_for("app-1")
    assert shard.coordinator_epoch == shard.plog.epoch >= 1
    offsets_tp = ("__consumer_offsets", b.groups.partition_for("group-a"))
    assert markers.calls == [(pid, 0, True, shard.coordinator_epoch, tuple(sorted([("t", 0), ("t", 1), offsets_tp])))]
    # a retried EndTxn of the finished commit succeeds again; an abort of it is refused
    assert (await txns.end_txn("app-1", pid, 0, commit=True)).error == ErrorCode.none
    assert (await txns.end_txn("app-1", pid, 0, commit=False)).error == ErrorCode.invalid_txn_state


@pytest.mark.asyncio
async def test_unknown_partitions_and_bad_timeouts_are_refused(env: tuple[Broker, Markers]) -> None:
    b, _ = env
    txns = b.transactions
    assert (await txns.init_producer_id("x", 0)).error == ErrorCode.invalid_transaction_timeout
    assert (await txns.init_producer_id("x", txns.config.max_timeout_ms + 1)).error == \
        ErrorCode.invalid_transaction_timeout
    init = await txns.init_producer_id("x", 1000)
    errors = await txns.add_partitions("x", init.producer_id, 0, [("t", 0), ("nope", 0), ("t", 9)])
    assert errors == {("t", 0): ErrorCode.operation_not_attempted, ("nope", 0): ErrorCode.unknown_topic_or_partition,
                      ("t", 9): ErrorCode.unknown_topic_or_partition}
    assert await txns.add_partitions("never-initialised", 1, 0, [("t", 0)]) == {
        ("t", 0): ErrorCode.invalid_producer_id_mapping}


@pytest.mark.asyncio
async def test_a_new_producer_fences_the_old_one_and_aborts_its_transaction(env: tuple[Broker, Markers]) -> None:
    b, markers = env
    txns = b.transactions
    old = await txns.init_producer_id("app", 60_000)
    pid = old.producer_id
    assert (await txns.add_partitions("app", pid, 0, [("t", 2)]))[("t", 2)] == ErrorCode.none
    # the new instance: its first InitProducerId aborts the open transaction with a bumped epoch
    assert (await txns.init_producer_id("app", 60_000)).error == ErrorCode.concurrent_transactions
    await _settled(b, "app", TxnState.COMPLETE_ABORT)
    assert markers.calls == [(pid, 1, False, txns.shard_for("app").coordinator_epoch, (("t", 2),))]
    new = await txns.init_producer_id("app", 60_000)
    assert (new.error, new.producer_id, new.producer_epoch) == (ErrorCode.none, pid, 2)
    # the zombie (epoch 0) is fenced everywhere
    assert (await txns.add_partitions("app", pid, 0, [("t", 0)]))[("t", 0)] == ErrorCode.producer_fenced
    assert (await txns.end_txn("app", pid, 0, commit=True)).error == ErrorCode.producer_fenced
    assert await txns.verify_partition("app", pid, 0, "t", 2) == ErrorCode.producer_fenced
    assert (await txns.init_producer_id("app", 60_000, pid, 0)).error == ErrorCode.producer_fenced
    # KIP-360: the current producer re-initialising with its own id/epoch gets the next epoch
    again = await txns.init_producer_id("app", 60_000, pid, 2)
    assert (again.error, again.producer_epoch) == (ErrorCode.none, 3)


@pytest.mark.asyncio
async def test_a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced(env: tuple[Broker, Markers]) -> None:
    b, markers = env
    txns = b.transactions
    init = await txns.init_producer_id("slow", 1)
    pid = init.producer_id
    await txns.add_partitions("slow", pid, 0, [("t", 0)])
    await asyncio.sleep(0.01)
    assert await txns.abort_timed_out() == 1
    meta = await _settled(b, "slow", TxnState.COMPLETE_ABORT)
    assert meta.producer_epoch == 1
    assert markers.calls == [(pid, 1, False, txns.shard_for("slow").coordinator_epoch, (("t", 0),))]
    assert (await txns.end_txn("slow", pid, 0, commit=True)).error == ErrorCode.producer_fenced
    assert await txns.abort_timed_out() == 0


@pytest.mark.asyncio
async def test_idle_transactional_ids_expire(env: tuple[Broker, Markers]) -> None:
    b, _ = env
    txns = b.transactions
    await txns.init_producer_id("idle", 60_000)
    init = await txns.init_producer_id("busy", 60_000)
    await txns.add_partitions("busy", init.producer_id, 0, [("t", 0)])
    txns.config = replace(txns.config, id_expiration_ms=1)
    await asyncio.sleep(0.01)
    assert await txns.expire_ids() == 1  # the open transaction's id stays
    assert txns.describe("idle") is None and txns.describe("busy") is not None
    partition = txns.partition_for("idle")
    await txns.on_released(partition)
    txns.on_taken(partition)
    await txns.wait_loaded()
    assert txns.describe("idle") is None  # the tombstone replays too


@pytest.mark.asyncio
async def test_a_new_owner_replays_the_state_and_completes_a_prepared_commit(env: tuple[Broker, Markers]) -> None:
    b, markers = env
    txns = b.transactions
    init = await txns.init_producer_id("moving", 60_000)
    pid = init.producer_id
    await txns.add_partitions("moving", pid, 0, [("t", 0), ("t", 1)])
    markers.hold = asyncio.Event()  # the markers never land before the partition moves
    assert (await txns.end_txn("moving", pid, 0, commit=True)).error == ErrorCode.none
    async with asyncio.timeout(WAIT_S):
        while not markers.calls:
            await asyncio.sleep(0.01)
    partition = txns.partition_for("moving")
    old_epoch = txns.shard_for("moving").coordinator_epoch
    await txns.on_released(partition)  # the coordinator loses the partition mid-commit
    with pytest.raises(Exception, match="not owned here"):
        txns.describe("moving")
    # the next owner: a new load of the partition log (leader epoch bumped) replays PrepareCommit
    plog = await b.logs.get(txns.topic_id, partition)
    await b.logs.release(txns.topic_id, partition)
    assert plog.epoch == old_epoch
    markers.hold = None
    txns.on_taken(partition)
    await txns.wait_loaded()
    done = await _settled(b, "moving", TxnState.COMPLETE_COMMIT)
    new_epoch = txns.shard_for("moving").coordinator_epoch
    assert new_epoch > old_epoch
    assert markers.calls[-1] == (pid, 0, True, new_epoch, (("t", 0), ("t", 1)))
    assert done.producer_id == pid
    # and the replayed state keeps serving the producer
    assert (await txns.add_partitions("moving", pid, 0, [("t", 2)]))[("t", 2)] == ErrorCode.none


@pytest.mark.asyncio
async def test_markers_are_retried_until_the_partition_takes_them(env: tuple[Broker, Markers]) -> None:
    b, markers = env
    txns = b.transactions
    init = await txns.init_producer_id("retry", 60_000)
    await txns.add_partitions("retry", init.producer_id, 0, [("t", 0)])
    markers.answer = ErrorCode.not_leader_or_follower
    await txns.end_txn("retry", init.producer_id, 0, commit=False)
    async with asyncio.timeout(WAIT_S):
        while len(markers.calls) < 3:
            await asyncio.sleep(0.01)
    meta = txns.describe("retry")
    assert meta is not None and meta.state == TxnState.PREPARE_ABORT  # not complete while a marker is missing
    assert (await txns.init_producer_id("retry", 60_000)).error == ErrorCode.concurrent_transactions
    markers.answer = ErrorCode.none
    await _settled(b, "retry", TxnState.COMPLETE_ABORT)


@pytest.mark.asyncio
async def test_list_transactions_filters(env: tuple[Broker, Markers]) -> None:
    b, _ = env
    txns = b.transactions
    a = await txns.init_producer_id("list-a", 60_000)
    await txns.init_producer_id("list-b", 60_000)
    await txns.add_partitions("list-a", a.producer_id, 0, [("t", 0)])
    code, unknown, listed = txns.list_transactions()
    assert code == ErrorCode.none and unknown == []
    assert [(t.transactional_id, t.state) for t in listed] == [("list-a", "Ongoing"), ("list-b", "Empty")]
    _, unknown, listed = txns.list_transactions(states=["Ongoing", "Bogus"])
    assert unknown == ["Bogus"] and [t.transactional_id for t in listed] == ["list-a"]
    _, _, listed = txns.list_transactions(producer_ids=[a.producer_id], pattern="list-.*")
    assert [t.transactional_id for t in listed] == ["list-a"]
    _, _, listed = txns.list_transactions(min_duration_ms=3_600_000)
    assert listed == []


# --- broker to broker: verification and markers for a coordinator or leader elsewhere --------------


@dataclass
class ElsewhereRouting:
    """A routing that names another broker (``remote``) the leader of everything, this one being node 2."""

    remote: Endpoint
    node_id: int = 2
    generation: int = 0

    def brokers(self) -> Sequence[Endpoint]:
        return (self.remote,)

    def endpoint(self, node_id: int) -> Endpoint | None:
        return self.remote if node_id == self.remote.node_id else None

    def controller_id(self) -> int:
        return self.remote.node_id

    def leader(self, topic_id: str, partition: int) -> Leader | None:
        return Leader(self.remote.node_id, 0)

    def serving(self, topic_id: str, partition: int) -> bool:
        return False


@pytest.mark.asyncio
async def test_verification_and_markers_go_over_the_wire_to_the_broker_that_owns_them(
    env: tuple[Broker, Markers],
) -> None:
    remote, _ = env  # the coordinator of every id and the leader of every partition, behind a real listener
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
        init = await remote.transactions.init_producer_id("far", 60_000)
        pid = init.producer_id
        await remote.transactions.add_partitions("far", pid, 0, [("t", 1)])
        # KIP-890 part 1 from a partition leader that is not the coordinator: AddPartitionsToTxn v4 verify_only
        assert await here.transactions.verify_partition("far", pid, 0, "t", 1) == ErrorCode.none
        assert await here.transactions.verify_partition("far", pid, 0, "t", 2) == ErrorCode.invalid_txn_state
        assert await here.transactions.verify_partition("far", pid, 7, "t", 1) == ErrorCode.producer_fenced
        # markers for partitions led elsewhere: one WriteTxnMarkers to the leader, answered per partition
        await here.transactions.markers.send(pid, 0, False, 5, [("t", 1)])
        plog = await remote.logs.get(remote.topics.get("t").topic_id, 1)  # type: ignore[union-attr]
        assert plog.log_end_offset == 1  # the ABORT marker, written by the remote broker's partition
        here.routing = ElsewhereRouting(Endpoint(1, "127.0.0.1", 1))  # nobody listens: retried, not lost
        sending = asyncio.ensure_future(here.transactions.markers.send(pid, 0, False, 5, [("t", 1)]))
        await asyncio.sleep(0.3)
        assert not sending.done()
        here.routing = ElsewhereRouting(Endpoint(1, "127.0.0.1", port))
        async with asyncio.timeout(WAIT_S):
            await sending
        assert plog.log_end_offset == 2
    finally:
        await here.stop()
        await store.close()
        await server.stop()


@pytest.mark.asyncio
async def test_snapshots_bound_the_replay_and_keep_the_state() -> None:
    store = await EmbeddedMetadataStore.open(None)
    ledgers = MemoryLedgerClient()
    try:
        plog = PartitionLog(store, Keys("snap"), ledgers, "txn-state", 0, LogConfig(rollover_bytes=4096))
        await plog.load()
        shard = TxnShard(0, plog, snapshot_records=20)
        await shard.load()
        for i in range(100):  # ten ids, each written ten times; one expires
            meta = TxnMetadata(f"id-{i % 10}", i % 10, i // 10, 60_000, TxnState.EMPTY, update_ms=i)
            await shard.write(meta, meta.transactional_id)
        await shard.write(None, "id-3")
        async with asyncio.timeout(WAIT_S):
            while shard.snapshots == 0 or shard._tasks:
                await asyncio.sleep(0.01)
        assert plog.log_start_offset > 0
        expected = {t: (m.producer_id, m.producer_epoch, m.update_ms) for t, m in shard.txns.items()}
        assert len(expected) == 9 and expected["id-9"] == (9, 9, 99)
        await shard.close()
        await plog.close()
        again = PartitionLog(store, Keys("snap"), ledgers, "txn-state", 0, LogConfig(rollover_bytes=4096))
        await again.load()
        replayed = TxnShard(0, again, snapshot_records=20)
        records = await replayed.load()
        assert records < 101  # read from the snapshot on, not every write ever made
        assert {t: (m.producer_id, m.producer_epoch, m.update_ms) for t, m in replayed.txns.items()} == expected
        assert replayed.coordinator_epoch == shard.coordinator_epoch + 1
        await replayed.close()
        await again.close()
    finally:
        await store.close()
