"""The partition side of transactions over real sockets, against a ``tidelog run`` process (requests encoded by
kio, as clients and coordinators send them; record batches built byte by byte by kafka_wire).

A transactional batch the coordinator has not seen added is refused (KIP-890 part 1); one that was added opens a
transaction that holds the last stable offset back: read_committed Fetch stops below it and ListOffsets(latest,
read_committed) answers it, DescribeProducers shows the transaction's start. A WriteTxnMarkers ABORT (what
``kafka-transactions abort`` sends to a leader) ends it: the LSO reaches the high watermark and read_committed
Fetch lists the aborted transaction, so a consumer drops its records; an EndTxn commit leaves none listed. The
same answers come back after the broker is killed and restarted (the state is rebuilt from the partition
snapshot and the replayed tail ledger). Offloaded data: the second test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection, KafkaClient, request_module
from brokers.group_admin import list_offsets
from brokers.groups.records import partition_for
from brokers.handlers.base import make, ms
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import PartitionState, SegmentRecord, TopicRecord
from storage.segment.catalog import list_segments

from . import kafka_wire as kw
from .broker_process import BrokerProcess
from .conftest import _finish
from .helpers import create_topic

PRODUCE, FETCH, LIST_OFFSETS, WRITE_TXN_MARKERS, DESCRIBE_PRODUCERS = 0, 1, 2, 27, 61
METADATA, INIT_PRODUCER_ID, ADD_PARTITIONS, END_TXN = 3, 22, 24, 26
RETRIABLE = {ErrorCode.coordinator_load_in_progress, ErrorCode.coordinator_not_available,
             ErrorCode.concurrent_transactions, ErrorCode.not_coordinator}  # fmt: skip
TRANSACTIONAL = 0x10
CONTROL = 0x20
READ_UNCOMMITTED, READ_COMMITTED = 0, 1
CONFIGS = {"transaction.state.log.num.partitions": "4"}
WAIT_S = 60.0  # a hang guard for polling loops, never a timing assertion


@pytest.fixture(scope="module")
def txn_broker(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(Path(tmp_path_factory.mktemp("txnp")) / "data", configs=CONFIGS)
    try:
        yield b.start()
    finally:
        _finish(b, request)


def _run(bootstrap: str, body: Callable[[Connection], Awaitable[None]]) -> None:
    async def main() -> None:
        host, port = bootstrap.split(":")
        conn = await Connection.open(host, int(port))
        try:
            await body(conn)
        finally:
            await conn.close()

    asyncio.run(main())


async def _until(call: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    """Repeat ``call`` until ``done(answer)`` (retriable coordinator answers while it loads)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = await call()
        if done(answer) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def _init(conn: Connection, txn_id: str) -> Any:
    mod = request_module(INIT_PRODUCER_ID, 4)
    return await _until(
        lambda: conn.send(make(mod.InitProducerIdRequest, transactional_id=txn_id, transaction_timeout=ms(120_000),
                               producer_id=-1, producer_epoch=-1)),
        lambda r: r.error_code not in RETRIABLE,
    )  # fmt: skip


async def _add(conn: Connection, txn_id: str, pid: int, epoch: int, topic: str) -> ErrorCode:
    mod = request_module(ADD_PARTITIONS, 3)
    resp = await _until(
        lambda: conn.send(make(
            mod.AddPartitionsToTxnRequest, v3_and_below_transactional_id=txn_id, v3_and_below_producer_id=pid,
            v3_and_below_producer_epoch=epoch,
            v3_and_below_topics=(make(mod.AddPartitionsToTxnTopic, name=topic, partitions=(0,)),),
        )),
        lambda r: r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code not in RETRIABLE,
    )  # fmt: skip
    code: ErrorCode = resp.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
    return code


async def _end(conn: Connection, txn_id: str, pid: int, epoch: int, commit: bool) -> ErrorCode:
    mod = request_module(END_TXN, 3)
    resp = await _until(
        lambda: conn.send(make(mod.EndTxnRequest, transactional_id=txn_id, producer_id=pid, producer_epoch=epoch,
                               committed=commit)),
        lambda r: r.error_code not in RETRIABLE,
    )  # fmt: skip
    code: ErrorCode = resp.error_code
    return code


async def _txn_partition_epoch(conn: Connection, txn_id: str) -> int:
    """The leader epoch of the id's ``__transaction_state`` partition (the coordinator epoch), from Metadata."""
    partition = partition_for(txn_id, int(CONFIGS["transaction.state.log.num.partitions"]))
    mod = request_module(METADATA, 9)
    resp = await conn.send(make(
        mod.MetadataRequest, topics=(make(mod.MetadataRequestTopic, name="__transaction_state"),),
        allow_auto_topic_creation=False, include_cluster_authorized_operations=False,
        include_topic_authorized_operations=False,
    ))  # fmt: skip
    (p,) = [p for p in resp.topics[0].partitions if p.partition_index == partition]
    return int(p.leader_epoch)


def _batch(values: list[bytes], pid: int = -1, epoch: int = -1, seq: int = -1, attributes: int = 0) -> bytes:
    records = [kw.Record(key=None, value=v) for v in values]
    return kw.record_batch(records, int(time.time() * 1000), producer_id=pid, producer_epoch=epoch,
                           base_sequence=seq, attributes=attributes)  # fmt: skip


async def _produce(conn: Connection, topic: str, data: bytes, txn_id: str | None = None) -> tuple[ErrorCode, int]:
    mod = request_module(PRODUCE, 9)
    resp = await conn.send(make(
        mod.ProduceRequest, transactional_id=txn_id, acks=-1, timeout=ms(30_000),
        topic_data=(make(mod.TopicProduceData, name=topic, partition_data=(
            make(mod.PartitionProduceData, index=0, records=data),)),),
    ))  # fmt: skip
    (part,) = resp.responses[0].partition_responses
    return part.error_code, int(part.base_offset)


async def _fetch(conn: Connection, topic: str, offset: int, isolation: int) -> Any:
    mod = request_module(FETCH, 12)
    resp = await conn.send(make(
        mod.FetchRequest, cluster_id=None, replica_id=-1, max_wait=ms(0), min_bytes=0, max_bytes=8 << 20,
        isolation_level=isolation, session_id=0, session_epoch=-1, rack_id="", forgotten_topics_data=(),
        topics=(make(mod.FetchTopic, topic=topic, partitions=(make(
            mod.FetchPartition, partition=0, current_leader_epoch=-1, fetch_offset=offset, last_fetched_epoch=-1,
            log_start_offset=-1, partition_max_bytes=8 << 20),)),),
    ))  # fmt: skip
    (part,) = resp.responses[0].partitions
    assert part.error_code == ErrorCode.none
    return part


async def _committed_view(conn: Connection, topic: str) -> tuple[list[bytes | None], list[tuple[int, int]], int, int]:
    """What a read_committed consumer of the partition sees from 0 (fetching until the LSO, as it does): kept
    values, the aborted transactions listed, the LSO and the high watermark."""
    offset = 0
    kept: list[bytes | None] = []
    listed: set[tuple[int, int]] = set()
    dropping: set[int] = set()
    starts: dict[int, int] = {}
    deadline = time.monotonic() + WAIT_S
    while True:
        part = await _fetch(conn, topic, offset, READ_COMMITTED)
        lso, hw = int(part.last_stable_offset), int(part.high_watermark)
        for a in part.aborted_transactions or ():
            listed.add((int(a.producer_id), int(a.first_offset)))
            starts[int(a.producer_id)] = int(a.first_offset)
        for b in kw.parse_batches(bytes(part.records or b"")):
            if b.base_offset + b.last_offset_delta < offset:
                continue
            offset = b.base_offset + b.last_offset_delta + 1
            if b.attributes & CONTROL:
                dropping.discard(b.producer_id)
                continue
            if b.producer_id in starts and starts[b.producer_id] <= b.base_offset:
                dropping.add(b.producer_id)
            if b.producer_id not in dropping:
                kept += [value for (_, _, _, value, _) in b.records]
        if offset >= lso or time.monotonic() > deadline:
            return kept, sorted(listed, key=lambda t: t[1]), lso, hw


async def _latest(conn: Connection, topic: str, isolation: int) -> int:
    mod = request_module(LIST_OFFSETS, 5)
    resp = await conn.send(make(
        mod.ListOffsetsRequest, replica_id=-1, isolation_level=isolation, topics=(make(
            mod.ListOffsetsTopic, name=topic, partitions=(make(
                mod.ListOffsetsPartition, partition_index=0, current_leader_epoch=-1, timestamp=-1),)),),
    ))  # fmt: skip
    (part,) = resp.topics[0].partitions
    assert part.error_code == ErrorCode.none
    return int(part.offset)


async def _txn_starts(conn: Connection, topic: str) -> dict[int, int]:
    mod = request_module(DESCRIBE_PRODUCERS, 0)
    resp = await conn.send(make(mod.DescribeProducersRequest, topics=(
        make(mod.TopicRequest, name=topic, partition_indexes=(0,)),)))  # fmt: skip
    (part,) = resp.topics[0].partitions
    assert part.error_code == ErrorCode.none
    return {int(p.producer_id): int(p.current_txn_start_offset) for p in part.active_producers}


async def _write_marker(
    conn: Connection, topic: str, pid: int, epoch: int, commit: bool, coordinator_epoch: int
) -> Any:
    mod = request_module(WRITE_TXN_MARKERS, 1)
    resp = await conn.send(make(mod.WriteTxnMarkersRequest, markers=(make(
        mod.WritableTxnMarker, producer_id=pid, producer_epoch=epoch, transaction_result=commit,
        coordinator_epoch=coordinator_epoch,
        topics=(make(mod.WritableTxnMarkerTopic, name=topic, partition_indexes=(0,)),
                make(mod.WritableTxnMarkerTopic, name="no-such-topic", partition_indexes=(0,))),
    ),)))  # fmt: skip
    (marker,) = resp.markers
    return {(t.name, int(p.partition_index)): p.error_code for t in marker.topics for p in t.partitions}


def test_open_abort_and_commit_on_the_wire_and_after_a_restart(txn_broker: BrokerProcess) -> None:
    bootstrap = txn_broker.bootstrap
    topic = "txn-partition-wire"
    create_topic(bootstrap, topic, 1)
    seen: dict[str, Any] = {}

    async def before_restart(conn: Connection) -> None:
        assert await _produce(conn, topic, _batch([b"plain-0", b"plain-1"])) == (ErrorCode.none, 0)
        init = await _init(conn, "txp-abort")
        pid, epoch = int(init.producer_id), int(init.producer_epoch)
        # KIP-890 part 1: not yet added to the transaction: refused, nothing written
        data = _batch([b"aborted-0", b"aborted-1"], pid, epoch, 0, TRANSACTIONAL)
        assert (await _produce(conn, topic, data, "txp-abort"))[0] == ErrorCode.invalid_txn_state
        assert (await _produce(conn, topic, data, None))[0] == ErrorCode.transactional_id_authorization_failed
        assert await _add(conn, "txp-abort", pid, epoch, topic) == ErrorCode.none
        assert await _produce(conn, topic, data, "txp-abort") == (ErrorCode.none, 2)
        assert await _produce(conn, topic, _batch([b"plain-2"])) == (ErrorCode.none, 4)
        # the open transaction holds the LSO at its first offset
        assert await _latest(conn, topic, READ_UNCOMMITTED) == 5
        assert await _latest(conn, topic, READ_COMMITTED) == 2
        kept, aborted, lso, hw = await _committed_view(conn, topic)
        assert (kept, aborted, lso, hw) == ([b"plain-0", b"plain-1"], [], 2, 5)
        assert (await _txn_starts(conn, topic))[pid] == 2
        # kafka-transactions abort: WriteTxnMarkers ABORT to the leader
        coordinator_epoch = await _txn_partition_epoch(conn, "txp-abort")
        errors = await _write_marker(conn, topic, pid, epoch, False, coordinator_epoch)
        assert errors == {(topic, 0): ErrorCode.none, ("no-such-topic", 0): ErrorCode.unknown_topic_or_partition}
        stale = await _write_marker(conn, topic, pid, epoch, False, coordinator_epoch - 1)
        assert stale[(topic, 0)] == ErrorCode.transaction_coordinator_fenced
        assert await _latest(conn, topic, READ_COMMITTED) == 6
        kept, aborted, lso, hw = await _committed_view(conn, topic)
        assert (kept, aborted, lso, hw) == ([b"plain-0", b"plain-1", b"plain-2"], [(pid, 2)], 6, 6)
        assert (await _txn_starts(conn, topic))[pid] == -1
        # a committed transaction through the coordinator: EndTxn writes the COMMIT marker; nothing listed
        init = await _init(conn, "txp-commit")
        pid2, epoch2 = int(init.producer_id), int(init.producer_epoch)
        assert await _add(conn, "txp-commit", pid2, epoch2, topic) == ErrorCode.none
        committed = _batch([b"committed-0"], pid2, epoch2, 0, TRANSACTIONAL)
        assert await _produce(conn, topic, committed, "txp-commit") == (ErrorCode.none, 6)
        assert await _latest(conn, topic, READ_COMMITTED) == 6
        assert await _end(conn, "txp-commit", pid2, epoch2, commit=True) == ErrorCode.none
        deadline = time.monotonic() + WAIT_S  # the coordinator writes the marker after answering EndTxn
        while await _latest(conn, topic, READ_COMMITTED) < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        kept, aborted, lso, hw = await _committed_view(conn, topic)
        assert (kept, aborted, lso, hw) == ([b"plain-0", b"plain-1", b"plain-2", b"committed-0"], [(pid, 2)], 8, 8)
        # one more left open across the restart
        init = await _init(conn, "txp-open")
        pid3, epoch3 = int(init.producer_id), int(init.producer_epoch)
        assert await _add(conn, "txp-open", pid3, epoch3, topic) == ErrorCode.none
        left_open = _batch([b"open-0"], pid3, epoch3, 0, TRANSACTIONAL)
        assert await _produce(conn, topic, left_open, "txp-open") == (ErrorCode.none, 8)
        seen.update(pid=pid, pid3=pid3, kept=kept)

    _run(bootstrap, before_restart)
    txn_broker.kill9()  # a crash: the tail ledger is recovered and replayed
    txn_broker.start()

    async def after_restart(conn: Connection) -> None:
        kept, aborted, lso, hw = await _committed_view(conn, topic)
        assert (kept, aborted, lso, hw) == (seen["kept"], [(seen["pid"], 2)], 8, 9)
        assert (await _txn_starts(conn, topic))[seen["pid3"]] == 8

    _run(bootstrap, after_restart)


OFFLOAD = {
    **CONFIGS,
    "offload.enable": "true",
    "ledger.rollover.bytes": "65536",
    "ledger.rollover.ms": "1500",
    "tail.cache.bytes.per.partition": "65536",
}
LATEST_TIERED, EARLIEST_LOCAL = -5, -4


def _tiers(bootstrap: str, topic: str) -> tuple[int, int, int]:
    """(latest-tiered, earliest-local, high watermark) of partition 0, by ListOffsets (KIP-1005)."""

    async def ask() -> tuple[int, int, int]:
        async with KafkaClient(bootstrap) as client:
            got = [(await list_offsets(client, {(topic, 0): ts}))[(topic, 0)] for ts in (LATEST_TIERED,
                                                                                          EARLIEST_LOCAL, -1)]
        return got[0], got[1], got[2]

    return asyncio.run(ask())


def test_read_committed_on_offloaded_transactions(broker_factory: Callable[..., BrokerProcess]) -> None:
    """Transactions (every other one aborted, the last left open) written across several ledgers, all offloaded:
    after a crash and restart the broker serves read_committed from the segments alone — their aborted-transaction
    indexes list every aborted one, the partition state no longer holds any, and the open one holds the LSO."""
    broker = broker_factory(OFFLOAD)
    bootstrap = broker.bootstrap
    topic = "txn-offloaded"
    create_topic(bootstrap, topic, 1)
    big = b"x" * 8000
    expected: list[bytes | None] = []
    aborted_pids: list[int] = []

    async def write(conn: Connection) -> None:
        for k in range(10):
            txn_id = f"txo-{k}"
            init = await _init(conn, txn_id)
            pid, epoch = int(init.producer_id), int(init.producer_epoch)
            assert await _add(conn, txn_id, pid, epoch, topic) == ErrorCode.none
            values = [b"%d-%d-" % (k, i) + big for i in range(2)]
            for seq, value in enumerate(values):
                code, _ = await _produce(conn, topic, _batch([value], pid, epoch, seq, TRANSACTIONAL), txn_id)
                assert code == ErrorCode.none
            plain = b"plain-%d" % k
            assert (await _produce(conn, topic, _batch([plain])))[0] == ErrorCode.none
            expected.append(plain)
            if k == 9:
                seen["open"] = pid
                break  # left open
            commit = k % 2 == 0
            assert await _end(conn, txn_id, pid, epoch, commit) == ErrorCode.none
            if commit:
                expected[-1:-1] = values  # they precede the plain record in offset order
            else:
                aborted_pids.append(pid)
        seen["lso"] = await _latest(conn, topic, READ_COMMITTED)

    seen: dict[str, int] = {}
    _run(bootstrap, write)
    deadline = time.monotonic() + 3 * WAIT_S
    while True:  # every ledger closes (by size, then by age) and goes to the object store
        tiered, local, hw = _tiers(bootstrap, topic)
        if tiered == hw - 1 and local == hw:
            break
        assert time.monotonic() < deadline, f"not all offloaded: {(tiered, local, hw)}"
        time.sleep(0.5)
    broker.kill9()
    broker.start()  # nothing in any cache: segments only

    async def read(conn: Connection) -> None:
        kept, listed, lso, _hw = await _committed_view(conn, topic)
        assert lso == seen["lso"]
        assert [pid for pid, _ in listed] == aborted_pids
        assert kept == expected  # committed and plain records, in offset order; no aborted one

    expected.pop()  # the last plain record follows the open transaction's first batch: above the LSO
    _run(bootstrap, read)
    broker.stop()

    async def stored() -> tuple[PartitionState, list[SegmentRecord]]:
        store = await EmbeddedMetadataStore.open(broker.data_dir / "metadata")
        keys = Keys("tidelog")
        try:
            found = await store.get(keys.topic(topic))
            assert found is not None
            topic_id = TopicRecord.decode(found.value).topic_id
            got = await store.get(keys.partition(topic_id, 0))
            assert got is not None
            return PartitionState.decode(got.value), await list_segments(store, keys, topic_id, 0)
        finally:
            await store.close()

    state, segments = asyncio.run(stored())
    assert len(segments) >= 3
    assert state.txn_aborted == ()  # every aborted transaction's marker is offloaded: the segments index them
    assert sum(s.aborted for s in segments) == len(aborted_pids)
    assert [pid for pid, _ in state.txn_ongoing] == [seen["open"]]
