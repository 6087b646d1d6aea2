"""Transactions in one partition log (in-memory ledgers): the last stable offset, read_committed reads, the
aborted-transaction index, markers and their epoch check, KIP-890 part 1 verification (with a stand-in for the
transaction coordinator), and the state surviving rollover, a crash and takeover, offload to segments, and a new
owner that reads those segments."""

from __future__ import annotations

import types
from typing import Any

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers import txn_markers
from brokers.codec import batch
from brokers.handlers import produce
from brokers.handlers.list_offsets import lookup
from brokers.log.partition import OPEN_TXN, LogConfig, LogError, PartitionLog, Tiering
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import PartitionState
from storage.objectstore import MemoryObjectStore
from storage.offload import Offloader
from storage.segment.cache import BlockCache
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient
from tests.unit.test_txn_state import txn_batch

KEYS = Keys("t")
pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def store() -> EmbeddedMetadataStore:
    return await EmbeddedMetadataStore.open(None)


async def _append(plog: PartitionLog, data: bytes, guard: object | None = None) -> int:
    return (await (await plog.append(data, batch.validate(data), guard=guard))).base_offset


async def _marker(plog: PartitionLog, pid: int, commit: bool, epoch: int = 0) -> int:
    return (await (await plog.write_marker(pid, epoch, commit, 5))).base_offset


async def _committed(plog: PartitionLog, offset: int) -> list[batch.BatchHeader]:
    """Every batch a read_committed consumer gets from ``offset`` up to the LSO."""
    heads: list[batch.BatchHeader] = []
    while offset < plog.last_stable_offset:
        result = await plog.read(offset, 1 << 20, committed=True)
        assert result.batches
        got = batch.iter_headers(b"".join(result.batches))
        heads += got
        offset = got[-1].last_offset + 1
    assert (await plog.read(offset, 1 << 20, committed=True)).batches == []
    return heads


def _visible(plog_aborted: list[tuple[int, int]], heads: list[batch.BatchHeader]) -> list[int]:
    """Offsets of the data records a read_committed consumer keeps (as clients filter with the aborted list)."""
    aborted = dict(plog_aborted)
    dropping: set[int] = set()
    out: list[int] = []
    for h in heads:
        if h.is_control:
            dropping.discard(h.producer_id)
            continue
        if h.producer_id in aborted and aborted[h.producer_id] <= h.base_offset:
            dropping.add(h.producer_id)
        if h.producer_id not in dropping:
            out.extend(range(h.base_offset, h.last_offset + 1))
    return out


async def test_open_transaction_holds_the_lso_and_markers_release_it(store: EmbeddedMetadataStore) -> None:
    plog = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig())
    await plog.load()
    assert await _append(plog, make_batch(2)) == 0
    assert await _append(plog, txn_batch(10, seq=0)) == 2  # producer 10 opens a transaction at 2
    assert await _append(plog, make_batch(2)) == 4
    assert await _append(plog, txn_batch(11, seq=0)) == 6  # producer 11 at 6
    assert plog.high_watermark == 8 and plog.last_stable_offset == 2
    assert plog.ongoing_transactions() == {10: 2, 11: 6}
    assert [h.base_offset for h in await _committed(plog, 0)] == [0]
    assert await lookup(plog, -1, committed=True) == (-1, 2)
    assert await lookup(plog, -1) == (-1, 8)
    assert await _marker(plog, 10, commit=True) == 8
    assert plog.last_stable_offset == 6
    assert await _marker(plog, 11, commit=False) == 9
    assert plog.last_stable_offset == plog.high_watermark == 10 and plog.ongoing_transactions() == {}
    heads = await _committed(plog, 0)
    assert [h.base_offset for h in heads] == [0, 2, 4, 6, 8, 9]
    aborted = await plog.aborted_transactions(0, 10)
    assert aborted == [(11, 6)]
    assert _visible(aborted, heads) == [0, 1, 2, 3, 4, 5]
    assert await plog.aborted_transactions(0, 6) == []  # before the aborted one starts
    assert await plog.aborted_transactions(10, 20) == []  # after its marker
    await plog.close()


async def test_markers_check_the_producer_epoch_and_fence_older_writes(store: EmbeddedMetadataStore) -> None:
    plog = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig())
    await plog.load()
    await _append(plog, txn_batch(10, epoch=3, seq=0))
    with pytest.raises(LogError) as err:
        await plog.write_marker(10, 2, False, 0)
    assert err.value.code == ErrorCode.invalid_producer_epoch
    assert plog.last_stable_offset == 0  # still open
    await _marker(plog, 10, commit=False, epoch=4)  # the coordinator fenced epoch 3 and aborted with epoch 4
    assert plog.last_stable_offset == plog.high_watermark
    with pytest.raises(LogError) as err:
        await plog.append(txn_batch(10, epoch=3, seq=2), batch.validate(txn_batch(10, epoch=3, seq=2)))
    assert err.value.code == ErrorCode.invalid_producer_epoch  # the zombie's later write is refused
    assert await _append(plog, txn_batch(10, epoch=4, seq=0)) == 3  # the new epoch starts again at sequence 0
    # a coordinator that lost the transactional id (an older coordinator epoch) cannot end the transaction
    assert plog.coordinator_epoch(10) == 5
    with pytest.raises(LogError) as err:
        await plog.write_marker(10, 4, True, 4)
    assert err.value.code == ErrorCode.transaction_coordinator_fenced
    assert plog.ongoing_transactions() == {10: 3}
    assert await (await plog.write_marker(10, 4, True, 6))
    assert plog.coordinator_epoch(10) == 6 and plog.ongoing_transactions() == {}
    await plog.close()
    again = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig())
    await again.load()  # the coordinator epochs are in the snapshot (the ledgers here are gone: state only)
    assert again.coordinator_epoch(10) == 6


async def test_transactions_survive_rollover_crash_and_takeover(store: EmbeddedMetadataStore) -> None:
    ledgers = MemoryLedgerClient()
    config = LogConfig(rollover_bytes=300)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, config)
    await plog.load()
    await _append(plog, txn_batch(1, seq=0))  # 0..1, open across every rollover below
    await _append(plog, txn_batch(2, seq=0))  # 2..3
    for _ in range(6):
        await _append(plog, make_batch(3))
    await _marker(plog, 2, commit=False)  # aborts 2 at offset 22
    await _append(plog, txn_batch(3, seq=0))  # 23..24, open in the tail ledger
    assert len(plog.ledgers) > 3 and plog.last_stable_offset == 0
    # a crash: no close; the new owner has the snapshot of the last closed ledger plus the replayed tail
    stored = await store.get(KEYS.partition("tid", 0))
    assert stored is not None and PartitionState.decode(stored.value).txn_ongoing  # snapshot carries them
    again = PartitionLog(store, KEYS, ledgers, "tid", 0, config)
    await again.load()
    assert again.ongoing_transactions() == {1: 0, 3: 23}
    assert again.last_stable_offset == 0
    await _marker(again, 1, commit=True)
    assert again.last_stable_offset == 23
    assert await again.aborted_transactions(0, 23) == [(2, 2)]
    await _marker(again, 3, commit=False)
    assert again.last_stable_offset == again.high_watermark == 27
    assert await again.aborted_transactions(0, 27) == [(2, 2), (3, 23)]
    await again.close()  # a clean hand-over this time
    third = PartitionLog(store, KEYS, ledgers, "tid", 0, config)
    await third.load()
    assert third.ongoing_transactions() == {}
    assert await third.aborted_transactions(0, 27) == [(2, 2), (3, 23)]
    await third.close()


def _tiering(store: EmbeddedMetadataStore, ledgers: MemoryLedgerClient, objects: MemoryObjectStore) -> Tiering:
    return Tiering(objects, BlockCache(1 << 20), Offloader(store, KEYS, ledgers, objects))


async def test_aborted_index_moves_to_segments_and_serves_a_new_owner(store: EmbeddedMetadataStore) -> None:
    ledgers, objects = MemoryLedgerClient(), MemoryObjectStore()
    tiering = _tiering(store, ledgers, objects)
    config = LogConfig(rollover_bytes=400, tail_cache_bytes=1)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, config, tiering)
    await plog.load()
    expected_aborted = []
    for pid in range(20):
        first = await _append(plog, txn_batch(100 + pid, seq=0))
        await _append(plog, make_batch(2))
        await _marker(plog, 100 + pid, commit=pid % 2 == 0)
        if pid % 2:
            expected_aborted.append((100 + pid, first))
    await _append(plog, txn_batch(999, seq=0))  # one left open across the offload
    lso = plog.last_stable_offset
    await tiering.offloader.idle()
    assert len(plog.segments) >= 5
    assert sum(s.aborted for s in plog.segments) >= 5  # the segments index them now
    stored = await store.get(KEYS.partition("tid", 0))
    assert stored is not None
    state = PartitionState.decode(stored.value)
    assert all(t[2] >= state.txn_floor for t in state.txn_aborted)  # only what is still in ledgers
    assert len(state.txn_aborted) < len(expected_aborted)
    assert plog.indexed_aborted < len(expected_aborted)  # in memory too: only the ledger tail's
    assert await plog.aborted_transactions(0, lso) == expected_aborted
    heads = await _committed(plog, 0)
    visible = _visible(await plog.aborted_transactions(0, lso), heads)
    await plog.close()
    await tiering.offloader.close()
    # another broker takes the partition over: it wrote none of it, reads the segments listed in metadata
    tiering = _tiering(store, ledgers, objects)
    other = PartitionLog(store, KEYS, ledgers, "tid", 0, config, tiering)
    await other.load()
    assert other.last_stable_offset == lso and other.ongoing_transactions() == {999: lso}
    assert await other.aborted_transactions(0, lso) == expected_aborted
    assert _visible(await other.aborted_transactions(0, lso), await _committed(other, 0)) == visible
    middle = plog.segments[2].base_offset
    assert await other.aborted_transactions(middle, lso) == [t for t in expected_aborted if t[1] + 3 >= middle]
    await _marker(other, 999, commit=False)
    assert other.last_stable_offset == other.high_watermark
    await other.close()
    await tiering.offloader.close()


class StandIn:
    """The transaction coordinator's ``verify_partition`` as produce sees it (H2's is brokers/transactions)."""

    def __init__(self, answer: ErrorCode) -> None:
        self.answer = answer
        self.asked: list[tuple[Any, ...]] = []

    async def verify_partition(
        self, transactional_id: str, producer_id: int, producer_epoch: int, topic: str, partition: int,
        add: bool = False,
    ) -> ErrorCode:
        self.asked.append((transactional_id, producer_id, producer_epoch, topic, partition))
        return self.answer


def _ctx(verifier: StandIn | None) -> Any:
    broker = types.SimpleNamespace(config=types.SimpleNamespace(transaction_version=2),
                                   **({"transactions": verifier} if verifier is not None else {}))
    return types.SimpleNamespace(broker=broker, api_version=11)


async def test_kip890_verification_before_a_transaction_opens(store: EmbeddedMetadataStore) -> None:
    plog = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig())
    await plog.load()
    data = txn_batch(10, seq=0)
    head = batch.validate(data)[0]
    # the coordinator says the partition is not in the transaction: refused, nothing opened
    refusing = StandIn(ErrorCode.invalid_txn_state)
    with pytest.raises(LogError) as err:
        await produce._verified(_ctx(refusing), plog, "tx", head, "topic", 0)
    assert err.value.code == ErrorCode.invalid_txn_state
    assert refusing.asked == [("tx", 10, 0, "topic", 0)]
    # a coordinator that cannot answer now: retriable for the producer
    with pytest.raises(LogError) as err:
        await produce._verified(_ctx(StandIn(ErrorCode.coordinator_load_in_progress)), plog, "tx", head, "topic", 0)
    assert err.value.code == ErrorCode.not_enough_replicas
    # verified: the guard lets the batch open the transaction; later batches need no verification
    accepting = StandIn(ErrorCode.none)
    guard = await produce._verified(_ctx(accepting), plog, "tx", head, "topic", 0)
    assert guard is not None and guard is not OPEN_TXN
    assert await _append(plog, data, guard) == 0
    assert await produce._verified(_ctx(accepting), plog, "tx", head, "topic", 0) is OPEN_TXN
    assert len(accepting.asked) == 1
    assert await _append(plog, txn_batch(10, seq=2), OPEN_TXN) == 2
    # a marker ends the transaction between verification and append: the verified write is refused
    await _marker(plog, 10, commit=True)
    late = await produce._verified(_ctx(accepting), plog, "tx", head, "topic", 0)
    stale_open = OPEN_TXN
    await _marker(plog, 10, commit=False)
    with pytest.raises(LogError) as err:
        await _append(plog, txn_batch(10, seq=4), late)
    assert err.value.code == ErrorCode.invalid_txn_state
    with pytest.raises(LogError) as err:  # a write that found the transaction open, which then ended
        await _append(plog, txn_batch(10, seq=4), stale_open)
    assert err.value.code == ErrorCode.invalid_txn_state
    assert plog.ongoing_transactions() == {}
    # no transaction coordinator on the broker: transactional writes go unverified
    assert await produce._verified(_ctx(None), plog, "tx", head, "topic", 0) is None
    await plog.close()


class Groups:
    """The group coordinator's ``complete_transaction`` as write_markers sees it (H3's is brokers/groups)."""

    def __init__(self, plogs: dict[tuple[str, int], PartitionLog]) -> None:
        self.plogs = plogs
        self.completed: list[tuple[int, int, bool, bool]] = []

    async def complete_transaction(self, partition: int, producer_id: int, commit: bool) -> None:
        plog = self.plogs[("__consumer_offsets", partition)]
        durable = plog.ongoing_transactions() == {} and plog.last_stable_offset == plog.high_watermark
        self.completed.append((partition, producer_id, commit, durable))


async def test_write_markers_on_owned_partitions_then_completes_offsets(store: EmbeddedMetadataStore) -> None:
    ledgers = MemoryLedgerClient()
    plogs = {
        ("data", 0): PartitionLog(store, KEYS, ledgers, "data-id", 0, LogConfig()),
        ("__consumer_offsets", 3): PartitionLog(store, KEYS, ledgers, "offsets-id", 3, LogConfig()),
    }
    for plog in plogs.values():
        await plog.load()
        await _append(plog, txn_batch(10, seq=0))
    topics = {"data": types.SimpleNamespace(topic_id="data-id", partitions=1),
              "__consumer_offsets": types.SimpleNamespace(topic_id="offsets-id", partitions=50)}  # fmt: skip
    by_id = {(t.topic_id, i): plogs[(name, i)] for (name, i) in plogs for t in [topics[name]]}

    async def serving_log(topic_id: str, partition: int) -> PartitionLog:
        if (topic_id, partition) not in by_id:
            raise LogError(ErrorCode.not_leader_or_follower, "led elsewhere")
        return by_id[(topic_id, partition)]

    groups = Groups(plogs)
    broker: Any = types.SimpleNamespace(topics=types.SimpleNamespace(get=topics.get), serving_log=serving_log,
                                        groups=groups)  # fmt: skip
    wanted = [("data", 0), ("__consumer_offsets", 3), ("__consumer_offsets", 4), ("data", 7), ("nope", 0)]
    errors = await txn_markers.write_markers(broker, 10, 0, True, 2, wanted)
    assert errors == {
        ("data", 0): ErrorCode.none, ("__consumer_offsets", 3): ErrorCode.none,
        ("__consumer_offsets", 4): ErrorCode.not_leader_or_follower,
        ("data", 7): ErrorCode.unknown_topic_or_partition, ("nope", 0): ErrorCode.unknown_topic_or_partition,
    }  # fmt: skip
    assert groups.completed == [(3, 10, True, True)]  # once the marker was durable, offsets partitions only
    assert all(p.last_stable_offset == p.high_watermark == 3 for p in plogs.values())
    stale = await txn_markers.write_markers(broker, 10, 0, False, 1, [("data", 0)])  # an older coordinator
    assert stale == {("data", 0): ErrorCode.transaction_coordinator_fenced}
    assert txn_markers.verifier_of(broker) is None  # no transaction coordinator: Produce appends unverified
    for plog in plogs.values():
        await plog.close()


async def test_many_aborts_roll_the_ledger_and_bound_the_index(
    store: EmbeddedMetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("brokers.log.writing.ABORTS_PER_LEDGER", 3)
    monkeypatch.setattr("brokers.log.partition.MAX_INDEXED_ABORTS", 5)
    ledgers, objects = MemoryLedgerClient(), MemoryObjectStore()
    tiering = Tiering(objects, BlockCache(1 << 20), Offloader(store, KEYS, ledgers, objects), offload=False)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(), tiering)
    await plog.load()
    for pid in range(5):
        await _append(plog, txn_batch(pid, seq=0))
        await _marker(plog, pid, commit=False)
    assert len(plog.ledgers) >= 2  # rolled after 3 aborts: offload can take their index into a segment
    with pytest.raises(LogError) as err:  # the 6th transaction must wait for offload
        await _append(plog, txn_batch(99, seq=0))
    assert err.value.code == ErrorCode.not_enough_replicas
    assert await _append(plog, make_batch(1)) > 0  # everything else goes on
    await plog.close()
    await tiering.offloader.close()
    tiering = _tiering(store, ledgers, objects)  # offload on: the index moves out, transactions start again
    again = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(), tiering)
    await again.load()
    await tiering.offloader.idle()
    assert again.indexed_aborted < 5
    assert await _append(again, txn_batch(99, seq=0)) > 0
    assert [pid for pid, _ in await again.aborted_transactions(0, again.high_watermark)] == [0, 1, 2, 3, 4]
    await again.close()
    await tiering.offloader.close()
