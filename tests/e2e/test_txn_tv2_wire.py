"""KIP-890 part 2 (transaction version 2) over real sockets against a ``tidelog run`` process, every request
encoded by kio at the version a Kafka 4 producer sends when the broker finalizes ``transaction.version`` 2:
InitProducerId v5, transactional Produce v12 with no AddPartitionsToTxn (the leader adds the partition),
TxnOffsetCommit v5 with no AddOffsetsToTxn, EndTxn v5 (the epoch bumped, the new one answered).

Shown: ApiVersions finalizes transaction.version 2 (and 0 when the broker setting says so); commits and aborts
land as markers at the bumped epochs; read_committed sees exactly the committed records; a transactional
offset commit is applied with its transaction; a retried EndTxn gets the same answer; and the producer's late
write at the old epoch after EndTxn is refused — the hole Jepsen found, which the part-1 protocol (same epoch
for every transaction, EndTxn v3) leaves open: there the same late write joins the next transaction.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, request_module
from brokers.handlers.base import make, ms

from . import kafka_wire as kw
from . import txn_wire as tw
from .broker_process import BrokerProcess
from .conftest import _finish
from .helpers import create_topic
from .test_txn_offsets_wire import _fetch as _offsets
from .test_txn_offsets_wire import _txn_commit

PRODUCE, FETCH, LIST_OFFSETS, API_VERSIONS, TXN_OFFSET_COMMIT = 0, 1, 2, 18, 28
READ_COMMITTED = 1
CONFIGS = {"transaction.state.log.num.partitions": "2", "offsets.topic.num.partitions": "2"}
PRODUCE_RETRIABLE = {ErrorCode.not_enough_replicas, ErrorCode.not_leader_or_follower}


@pytest.fixture(scope="module")
def tv2_broker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(Path(tmp_path_factory.mktemp("tv2")) / "data", configs=CONFIGS)
    try:
        yield b.start()
    finally:
        _finish(b, request)


async def _features(conn: Connection) -> tuple[dict[str, int], dict[int, int]]:
    """(finalized feature levels, max version by API key) from ApiVersions v3."""
    resp: Any = await tw.send(conn, API_VERSIONS, 3, "ApiVersionsRequest", client_software_name="tv2-test",
                              client_software_version="1")
    return ({f.name: int(f.max_version_level) for f in resp.finalized_features},
            {int(k.api_key): int(k.max_version) for k in resp.api_keys})


def _batch(values: list[bytes], pid: int, epoch: int, seq: int) -> bytes:
    records = [kw.Record(key=None, value=v) for v in values]
    return kw.record_batch(records, int(time.time() * 1000), producer_id=pid, producer_epoch=epoch,
                           base_sequence=seq, attributes=tw.TRANSACTIONAL)


async def _produce(conn: Connection, topic: str, txn_id: str, data: bytes, version: int = 12, partition: int = 0
                   ) -> ErrorCode:
    """A transactional Produce (acks=all); retriable refusals (the coordinator loading) are retried."""
    mod = request_module(PRODUCE, version)

    async def once() -> ErrorCode:
        resp: Any = await conn.send(make(
            mod.ProduceRequest, transactional_id=txn_id, acks=-1, timeout=ms(30_000),
            topic_data=(make(mod.TopicProduceData, name=topic, partition_data=(
                make(mod.PartitionProduceData, index=partition, records=data),)),),
        ))  # fmt: skip
        code: ErrorCode = resp.responses[0].partition_responses[0].error_code
        return code

    code: ErrorCode = await tw.until(once, lambda c: c not in PRODUCE_RETRIABLE)
    return code


async def _end_v5(conn: Connection, txn_id: str, pid: int, epoch: int, commit: bool) -> tuple[ErrorCode, int, int]:
    resp: Any = await tw.until(
        lambda: tw.send(conn, tw.END_TXN, 5, "EndTxnRequest", transactional_id=txn_id, producer_id=pid,
                        producer_epoch=epoch, committed=commit),
        lambda r: r.error_code not in tw.RETRIABLE,
    )
    return resp.error_code, int(resp.producer_id), int(resp.producer_epoch)


async def _fetch_partition(conn: Connection, topic: str, offset: int, isolation: int, partition: int = 0) -> Any:
    mod = request_module(FETCH, 12)
    resp: Any = await conn.send(make(
        mod.FetchRequest, cluster_id=None, replica_id=-1, max_wait=ms(0), min_bytes=0, max_bytes=8 << 20,
        isolation_level=isolation, session_id=0, session_epoch=-1, rack_id="", forgotten_topics_data=(),
        topics=(make(mod.FetchTopic, topic=topic, partitions=(make(
            mod.FetchPartition, partition=partition, current_leader_epoch=-1, fetch_offset=offset,
            last_fetched_epoch=-1, log_start_offset=-1, partition_max_bytes=8 << 20),)),),
    ))  # fmt: skip
    (part,) = resp.responses[0].partitions
    assert part.error_code == ErrorCode.none
    return part


async def _latest(conn: Connection, topic: str, isolation: int, partition: int = 0) -> int:
    mod = request_module(LIST_OFFSETS, 5)
    resp: Any = await conn.send(make(
        mod.ListOffsetsRequest, replica_id=-1, isolation_level=isolation, topics=(make(
            mod.ListOffsetsTopic, name=topic, partitions=(make(
                mod.ListOffsetsPartition, partition_index=partition, current_leader_epoch=-1, timestamp=-1),)),),
    ))  # fmt: skip
    (part,) = resp.topics[0].partitions
    assert part.error_code == ErrorCode.none
    return int(part.offset)


async def _settled_lso(conn: Connection, topic: str, partition: int = 0) -> int:
    """The LSO once it reached the high watermark (markers follow EndTxn's answer, as in Kafka)."""
    answer: tuple[int, int] = await tw.until(
        lambda: _both(conn, topic, partition), lambda both: both[0] == both[1]
    )
    assert answer[0] == answer[1]
    return answer[0]


async def _both(conn: Connection, topic: str, partition: int = 0) -> tuple[int, int]:
    return (await _latest(conn, topic, READ_COMMITTED, partition), await _latest(conn, topic, 0, partition))


async def _committed_view(conn: Connection, topic: str, partition: int = 0
                          ) -> tuple[list[bytes | None], list[tuple[int, int]], int, int]:
    """What a read_committed consumer keeps of the partition from 0, filtering as Kafka's fetcher does: an aborted
    transaction listed at (producer, first offset) drops that producer's batches from there up to its ABORT
    marker (a producer may abort several transactions). Also the list, the LSO and the high watermark."""
    offset = 0
    kept: list[bytes | None] = []
    listed: set[tuple[int, int]] = set()
    pending: list[tuple[int, int]] = []  # (first offset, producer) listed and not reached yet, a heap
    dropping: set[int] = set()
    lso = hw = 0
    while True:
        part = await _fetch_partition(conn, topic, offset, READ_COMMITTED, partition)
        lso, hw = int(part.last_stable_offset), int(part.high_watermark)
        for a in part.aborted_transactions or ():
            entry = (int(a.producer_id), int(a.first_offset))
            if entry not in listed:
                listed.add(entry)
                heapq.heappush(pending, (entry[1], entry[0]))
        batches = kw.parse_batches(bytes(part.records or b""))
        for b in batches:
            if b.base_offset + b.last_offset_delta < offset:
                continue
            offset = b.base_offset + b.last_offset_delta + 1
            while pending and pending[0][0] <= b.base_offset + b.last_offset_delta:
                dropping.add(heapq.heappop(pending)[1])
            if b.attributes & tw.CONTROL:
                dropping.discard(b.producer_id)
                continue
            if b.producer_id not in dropping:
                kept += [value for (_, _, _, value, _) in b.records]
        if offset >= lso or not batches:
            return kept, sorted(listed, key=lambda t: t[1]), lso, hw


def test_tv2_transactions_over_the_wire(tv2_broker: BrokerProcess) -> None:
    topic, group, txn_id = "tv2-out", "tv2-group", "tv2-app"
    create_topic(tv2_broker.bootstrap, topic, partitions=1)
    create_topic(tv2_broker.bootstrap, "tv2-in", partitions=1)

    async def body(conn: Connection) -> None:
        finalized, max_versions = await _features(conn)
        assert finalized.get("transaction.version") == 2
        assert max_versions[tw.END_TXN] >= 5 and max_versions[PRODUCE] >= 12 and max_versions[TXN_OFFSET_COMMIT] >= 5
        init = await tw.init(conn, txn_id, version=5)
        assert init.error_code == ErrorCode.none
        pid, epoch = int(init.producer_id), int(init.producer_epoch)
        markers_expected: list[tuple[int, int, int]] = []

        # transaction 1, committed: the partition and the offsets partition are added implicitly
        assert await _produce(conn, topic, txn_id, _batch([b"c1-a", b"c1-b"], pid, epoch, 0)) == ErrorCode.none
        state = await tw.describe(conn, txn_id)
        assert state.transaction_state == "Ongoing"
        assert [(t.topic, tuple(t.partitions)) for t in state.topics] == [(topic, (0,))]
        assert await _txn_commit(conn, txn_id, pid, epoch, group, "tv2-in", {0: 42}, version=5) == {
            0: ErrorCode.none}
        assert (await _offsets(conn, group, "tv2-in", stable=True))[0][1] == ErrorCode.unstable_offset_commit
        code, end_pid, end_epoch = await _end_v5(conn, txn_id, pid, epoch, commit=True)
        assert (code, end_pid, end_epoch) == (ErrorCode.none, pid, epoch + 1)
        # the answer was lost: the retry with the old epoch gets the same one back
        assert await _end_v5(conn, txn_id, pid, epoch, commit=True) == (ErrorCode.none, pid, epoch + 1)
        markers_expected.append((pid, epoch + 1, tw.COMMIT))
        await tw.settled(conn, txn_id, "CompleteCommit")
        lso = await _settled_lso(conn, topic)
        assert (await _offsets(conn, group, "tv2-in", stable=True))[0] == (42, ErrorCode.none)

        # the old epoch's late write (a zombie request, or the producer's own retry after EndTxn): refused,
        # and it opens nothing (no hanging transaction, the LSO stays at the high watermark)
        late = _batch([b"late"], pid, epoch, 2)
        assert await _produce(conn, topic, txn_id, late) == ErrorCode.invalid_producer_epoch
        assert await _both(conn, topic) == (lso, lso)
        assert (await tw.describe(conn, txn_id)).transaction_state == "CompleteCommit"
        epoch += 1

        # transaction 2, aborted; transaction 3, committed: each at its own epoch, starting at sequence 0
        assert await _produce(conn, topic, txn_id, _batch([b"a2-a", b"a2-b"], pid, epoch, 0)) == ErrorCode.none
        assert await _end_v5(conn, txn_id, pid, epoch, commit=False) == (ErrorCode.none, pid, epoch + 1)
        markers_expected.append((pid, epoch + 1, tw.ABORT))
        epoch += 1
        # no wait for the abort's markers, as a client does not wait: a write of the next transaction that
        # reaches the partition first is refused retriably (and retried here) until the ABORT marker is in
        assert await _produce(conn, topic, txn_id, _batch([b"c3-a"], pid, epoch, 0)) == ErrorCode.none
        assert await _produce(conn, topic, txn_id, _batch([b"c3-b"], pid, epoch, 1)) == ErrorCode.none
        assert await _end_v5(conn, txn_id, pid, epoch, commit=True) == (ErrorCode.none, pid, epoch + 1)
        markers_expected.append((pid, epoch + 1, tw.COMMIT))
        await tw.settled(conn, txn_id, "CompleteCommit")
        await _settled_lso(conn, topic)

        kept, aborted, lso, hw = await _committed_view(conn, topic)
        assert kept == [b"c1-a", b"c1-b", b"c3-a", b"c3-b"]
        assert [p for p, _ in aborted] == [pid] and lso == hw
        markers = [(p, e, kind) for p, e, kind, _ in tw.control_markers(tv2_broker.bootstrap, topic, 0)]
        assert markers == markers_expected

    tw.run(tv2_broker.bootstrap, body)


def test_the_part1_protocol_is_unchanged_and_leaves_the_late_write_in(tv2_broker: BrokerProcess) -> None:
    """What clients that do not speak TV2 (librdkafka, kafka-python, aiokafka, kafkajs) get, as before: the epoch
    stays across transactions (EndTxn v3), partitions are added by AddPartitionsToTxn, and Produce below v12 only
    verifies. So the late write of a committed transaction, arriving once the producer has added the partition
    to its next transaction, joins that one — the hole part 2 closes for clients that ask for it."""
    topic, txn_id = "tv1-out", "tv1-app"
    create_topic(tv2_broker.bootstrap, topic, partitions=1)

    async def body(conn: Connection) -> None:
        init = await tw.init(conn, txn_id, version=4)
        pid, epoch = int(init.producer_id), int(init.producer_epoch)
        # without AddPartitionsToTxn, a v11 write is refused (KIP-890 part 1), not added
        assert await _produce(conn, topic, txn_id, _batch([b"x"], pid, epoch, 0), version=11) == \
            ErrorCode.invalid_txn_state
        assert await tw.add(conn, txn_id, pid, epoch, topic, (0,)) == {0: ErrorCode.none}
        assert await _produce(conn, topic, txn_id, _batch([b"t1"], pid, epoch, 0), version=11) == ErrorCode.none
        assert await tw.end(conn, txn_id, pid, epoch, commit=True) == ErrorCode.none
        await tw.settled(conn, txn_id, "CompleteCommit")
        assert (await tw.describe(conn, txn_id)).producer_epoch == epoch  # no bump
        assert await tw.add(conn, txn_id, pid, epoch, topic, (0,)) == {0: ErrorCode.none}
        assert await _produce(conn, topic, txn_id, _batch([b"late"], pid, epoch, 1), version=11) == ErrorCode.none
        assert await tw.end(conn, txn_id, pid, epoch, commit=True) == ErrorCode.none
        await tw.settled(conn, txn_id, "CompleteCommit")
        await _settled_lso(conn, topic)
        kept, _, _, _ = await _committed_view(conn, topic)
        assert kept == [b"t1", b"late"]

    tw.run(tv2_broker.bootstrap, body)


def test_transaction_version_0_is_not_finalized(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    b = BrokerProcess(tmp_path / "data", configs={**CONFIGS, "transaction.version": "0"})
    try:
        b.start()

        async def body(conn: Connection) -> None:
            finalized, _ = await _features(conn)
            assert "transaction.version" not in finalized and finalized.get("group.version") == 1

        tw.run(b.bootstrap, body)
    finally:
        _finish(b, request)
