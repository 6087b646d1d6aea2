"""Tiered storage through a real ``tidelog run`` process and real clients (issue 5, broker integration).

With small ledgers (``ledger.rollover.bytes=65536``) and a short age rollover, every ledger closes and is
offloaded to the object store and deleted from the bookie. ListOffsets with KIP-1005's special timestamps
shows the boundary between the tiers (latest-tiered = high watermark - 1 once all is offloaded); after a
stop, the broker's own metadata store and bookie journal are opened to check that every segment's ledger is
gone from the bookie. Records are read back byte-exact from offset 0, from the middle by timestamp and at the
tail while more are produced, before and after a restart: ~20 MB on the local-directory store
(``test_tiered_20mb_local``) and a smaller run on moto S3 over HTTP (``test_tiered_on_s3``). Then
DeleteRecords (every kio version), retention by bytes and by time, and backpressure while the object store
(moto, SIGSTOPped) is unavailable.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from brokers.cli.client import KafkaClient, request_module
from brokers.group_admin import list_offsets
from brokers.handlers.base import make
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import PartitionState, TopicRecord
from storage.bookie.bookie import Bookie
from storage.segment.catalog import list_segments
from tests.batches import make_batch
from tests.moto_server import MotoServer

from .broker_process import BrokerProcess
from .helpers import (
    Got,
    Rec,
    assert_acks_in_order,
    assert_same_records,
    confluent_produce,
    confluent_read,
    create_topic,
    high_watermarks,
)
from .test_rollover import PARTS, STEP_MS, check_offsets_for_times, check_tail, increasing_records

LATEST, EARLIEST, LATEST_TIERED, EARLIEST_LOCAL = -1, -2, -5, -4
WAIT = 180.0  # hang guard only
SMALL = {
    "offload.enable": "true",
    "ledger.rollover.bytes": "65536",
    "ledger.rollover.ms": "1500",
    "tail.cache.bytes.per.partition": "65536",
}
BUCKET = "tidelog-tiered"


def list_offsets_of(bootstrap: str, topic: str, timestamp: int, parts: int = PARTS) -> dict[int, int]:
    """partition -> ListOffsets(timestamp) through Tidelog's own asyncio client."""

    async def ask() -> dict[int, int]:
        async with KafkaClient(bootstrap) as client:
            got = await list_offsets(client, {(topic, p): timestamp for p in range(parts)})
        return {p: got[(topic, p)] for p in range(parts)}

    return asyncio.run(ask())


def tier_offsets(bootstrap: str, topic: str, parts: int = PARTS) -> dict[int, tuple[int, int, int]]:
    """partition -> (latest-tiered, earliest-local, high watermark), by ListOffsets."""
    got = [list_offsets_of(bootstrap, topic, ts, parts) for ts in (LATEST_TIERED, EARLIEST_LOCAL, LATEST)]
    return {p: (got[0][p], got[1][p], got[2][p]) for p in range(parts)}


def wait_all_offloaded(bootstrap: str, topic: str, parts: int = PARTS) -> None:
    """Until every partition's records are all in segments (the open ledger closes by age when idle)."""
    deadline = time.monotonic() + WAIT
    while True:
        offsets = tier_offsets(bootstrap, topic, parts)
        if all(tiered == hw - 1 and local == hw for tiered, local, hw in offsets.values()):
            return
        assert time.monotonic() < deadline, f"not all offloaded after {WAIT}s: {offsets}"
        time.sleep(0.5)


async def stored_topic_id(store: EmbeddedMetadataStore, keys: Keys, topic: str) -> str:
    """The id the broker's metadata store records for ``topic`` (read with the broker stopped)."""
    found = await store.get(keys.topic(topic))
    assert found is not None, f"no topic {topic} in the metadata store"
    return TopicRecord.decode(found.value).topic_id


def check_bookie_emptied(data_dir: Path, topic: str, ends: dict[int, int]) -> int:
    """With the broker stopped: every record is in a listed segment, no ledger but the last ref is left in
    the partition state, and the bookie's journal index holds no entry of any offloaded ledger. Returns the
    number of segments."""

    async def check() -> None:
        store = await EmbeddedMetadataStore.open(data_dir / "metadata")
        keys = Keys("tidelog")
        try:
            topic_id = await stored_topic_id(store, keys, topic)
            ledger_ids: list[int] = []
            for p in range(PARTS):
                segments = await list_segments(store, keys, topic_id, p)
                assert segments[0].base_offset == 0 and segments[-1].last_offset == ends[p] - 1
                assert all(a.last_offset + 1 == b.base_offset for a, b in itertools.pairwise(segments))
                got = await store.get(keys.partition(topic_id, p))
                assert got is not None
                refs = PartitionState.decode(got.value).ledgers
                assert len(refs) <= 1 and all(r.offloaded for r in refs), refs
                ledger_ids += [s.ledger_id for s in segments]
        finally:
            await store.close()
        bookie = await Bookie.open(data_dir / "bookie")
        try:
            held = [lid for lid in ledger_ids if bookie.entry_location(lid, 0) is not None]
            assert held == [], f"{len(held)} offloaded ledgers still on the bookie"
        finally:
            await bookie.close()
        return len(ledger_ids)

    return asyncio.run(check())


def replay_while_producing(broker: BrokerProcess, topic: str, base_ts: int) -> None:
    """A consumer replays the partitions from offset 0 (segments) while a producer appends at the tail: it
    reads every old record and every new one, byte-exact."""
    ends = {p: hw for p, (_lo, hw) in high_watermarks(broker.bootstrap, topic, range(PARTS)).items()}
    old = {p: confluent_read(broker.bootstrap, topic, [p], start=0, until={p: hw}) for p, hw in ends.items()}
    new = [Rec(i % PARTS, f"live-{i}".encode(), f"live {i} ".encode() * 100, (), base_ts + i) for i in range(1500)]
    acked: list[list[tuple[int, int]]] = []
    producer = threading.Thread(target=lambda: acked.append(confluent_produce(broker.bootstrap, topic, new)))
    producer.start()
    try:
        until = {p: ends[p] + sum(1 for r in new if r.partition == p) for p in range(PARTS)}
        got = confluent_read(broker.bootstrap, topic, range(PARTS), start=0, until=until)
    finally:
        producer.join(WAIT)
    assert acked and len(acked[0]) == len(new)
    for p in range(PARTS):
        mine = [g for g in got if g.partition == p and g.offset < until[p]]
        assert [g.offset for g in mine] == list(range(until[p]))
        assert mine[: ends[p]] == old[p]  # the replay saw exactly what a quiet read saw
        assert [(g.key, g.value) for g in mine[ends[p] :]] == [(r.key, r.value) for r in new if r.partition == p]


def roundtrip(
    make_broker: Callable[[], BrokerProcess], n: int, segment_gets: Callable[[], int] | None = None
) -> None:
    """``segment_gets``: GETs of segment objects the store has answered so far (moto's log), to check that the
    cold replay after the restart reads each small segment with about one GET (whole-object read-ahead)."""
    broker = make_broker()
    topic = f"tiered-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, PARTS)
    base_ts = int(time.time() * 1000) - 86_400_000
    recs = increasing_records(n, base_ts)
    acked = confluent_produce(broker.bootstrap, topic, recs, **{"linger.ms": 5, "batch.size": 16384})
    assert_acks_in_order(recs, acked, "tiered producer")
    counts = {p: sum(1 for r in recs if r.partition == p) for p in range(PARTS)}

    wait_all_offloaded(broker.bootstrap, topic)
    assert_same_records(recs, confluent_read(broker.bootstrap, topic, range(PARTS), start=0), PARTS, "from 0")
    check_offsets_for_times(broker, topic, recs)  # by timestamp from segments, then reading from the middle
    check_tail(broker, topic, base_ts + n * STEP_MS, "tail1")  # new records at the tail while all else is tiered
    replay_while_producing(broker, topic, base_ts + n * STEP_MS + 60_000)

    wait_all_offloaded(broker.bootstrap, topic)  # the tail records too
    ends = {p: hw for p, (_tiered, _local, hw) in tier_offsets(broker.bootstrap, topic).items()}
    broker.stop()
    segments = check_bookie_emptied(broker.data_dir, topic, ends)
    broker.start()
    gets_before = segment_gets() if segment_gets is not None else 0
    got = confluent_read(broker.bootstrap, topic, range(PARTS), start=0)
    assert_same_records(recs, [g for g in got if g.offset < counts[g.partition]], PARTS, "from 0 after restart")
    if segment_gets is not None:  # each partition's first segment by ranges (index, then blocks); the rest whole
        gets = segment_gets() - gets_before
        assert 0 < gets <= segments + 3 * PARTS, (gets, segments)
    check_offsets_for_times(broker, topic, recs)


@pytest.mark.slow  # make test: test_tiered_on_s3 and the smaller tiered tests
def test_tiered_20mb_local(broker_factory: Callable[..., BrokerProcess]) -> None:
    roundtrip(lambda: broker_factory(configs=SMALL), 20_000)


def test_tiered_on_s3(tmp_path: Path, moto: MotoServer) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    url = moto.s3_url(BUCKET, prefix)
    broker = BrokerProcess(tmp_path / "data", configs=SMALL, extra_args=["--object-store", url])
    try:
        roundtrip(lambda: broker.start(), 1500, lambda: moto_segment_gets(moto, prefix))
    finally:
        broker.close()


def moto_segment_gets(moto: MotoServer, prefix: str) -> int:
    """GETs of segment objects under ``prefix`` in moto's request log so far."""
    log = moto._log
    if log is None:
        return 0
    with log.open(errors="replace") as f:
        return sum(1 for line in f if "GET /" in line and f"/{prefix}/" in line and ".seg HTTP/" in line)


# --- DeleteRecords and retention ----------------------------------------------------------------------


def topic_id_of(bootstrap: str, topic: str) -> str:
    async def ask() -> str:
        async with KafkaClient(bootstrap) as client:
            (found,) = (await client.metadata([topic])).topics
        return str(found.topic_id)

    return asyncio.run(ask())


def segment_objects(broker: BrokerProcess, topic: str) -> list[tuple[int, int]]:
    """(base offset, size) of the segment objects of the topic's partition 0 in the local object store."""
    folder = broker.data_dir / "objects" / "tidelog" / "topics" / topic_id_of(broker.bootstrap, topic) / "0"
    found = folder.glob("*.seg")
    return sorted((int(f.name.split("-")[0]), f.stat().st_size) for f in found)


def produce_one_partition(bootstrap: str, topic: str, n: int, base_ts: int, first: int = 0) -> list[Rec]:
    recs = [Rec(0, f"k{i}".encode(), f"value {i} ".encode() * 60, (), base_ts + i) for i in range(n)]
    acked = confluent_produce(bootstrap, topic, recs, **{"linger.ms": 5, "batch.size": 16384})
    assert [off for _p, off in acked] == list(range(first, first + n))
    return recs


def read_from(bootstrap: str, topic: str, start: int, reset: str) -> list[Got]:
    return confluent_read(bootstrap, topic, [0], start=start, **{"auto.offset.reset": reset})


def delete_records_raw(bootstrap: str, topic: str, partition: int, offset: int, version: int) -> tuple[int, int]:
    """DeleteRecords at one kio version through Tidelog's asyncio client: (error code, low watermark)."""

    async def send() -> tuple[int, int]:
        mod = request_module(21, version)
        async with KafkaClient(bootstrap) as client:
            conn = await client.any_connection()
            wanted = make(mod.DeleteRecordsPartition, partition_index=partition, offset=offset)
            resp = await conn.send(make(
                mod.DeleteRecordsRequest, timeout=datetime.timedelta(seconds=30),
                topics=(make(mod.DeleteRecordsTopic, name=topic, partitions=(wanted,)),),
            ))  # fmt: skip
        (result,) = resp.topics[0].partitions
        return int(result.error_code), int(result.low_watermark)

    return asyncio.run(send())


def test_delete_records_removes_segments_and_reads_below_start_are_out_of_range(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    broker = broker_factory(configs=SMALL)
    topic = f"dr-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    recs = produce_one_partition(broker.bootstrap, topic, 2000, int(time.time() * 1000))
    wait_all_offloaded(broker.bootstrap, topic, 1)
    before = segment_objects(broker, topic)
    assert len(before) >= 10
    cut = before[len(before) // 2][0] + 3  # inside a segment: that segment stays, the ones below go

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    (fut,) = admin.delete_records([TopicPartition(topic, 0, cut)], request_timeout=30).values()
    assert fut.result(30).low_watermark == cut  # the new low watermark
    assert list_offsets_of(broker.bootstrap, topic, EARLIEST, 1) == {0: cut}
    after = segment_objects(broker, topic)
    assert after == [s for s in before if s[0] >= before[len(before) // 2][0]]  # objects below are deleted

    # Below the log start: OFFSET_OUT_OF_RANGE, which a consumer resolves by its auto.offset.reset
    with pytest.raises(KafkaException) as info:
        read_from(broker.bootstrap, topic, 0, "error")
    assert info.value.args[0].code() == KafkaError._AUTO_OFFSET_RESET
    got = read_from(broker.bootstrap, topic, 0, "earliest")
    assert [g.offset for g in got] == list(range(cut, len(recs)))
    assert [g.value for g in got] == [r.value for r in recs[cut:]]
    assert read_from(broker.bootstrap, topic, 0, "latest") == []  # positioned at the end
    # Past the high watermark, DeleteRecords is refused with OFFSET_OUT_OF_RANGE
    (fut,) = admin.delete_records([TopicPartition(topic, 0, len(recs) + 10)], request_timeout=30).values()
    with pytest.raises(KafkaException) as info:
        fut.result(30)
    assert info.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE
    # every kio version: a step each; an unknown partition; an offset past the end
    for version in range(3):
        assert delete_records_raw(broker.bootstrap, topic, 0, cut + 1 + version, version) == (0, cut + 1 + version)
        assert delete_records_raw(broker.bootstrap, topic, 5, 0, version)[0] == 3  # UNKNOWN_TOPIC_OR_PARTITION
        assert delete_records_raw(broker.bootstrap, topic, 0, len(recs) + 1, version)[0] == 1  # OFFSET_OUT_OF_RANGE
    assert delete_records_raw(broker.bootstrap, topic, 0, cut, 2) == (0, cut + 3)  # never moves back
    # -1: everything up to the high watermark
    (fut,) = admin.delete_records([TopicPartition(topic, 0, -1)], request_timeout=30).values()
    assert fut.result(30).low_watermark == len(recs)
    assert segment_objects(broker, topic) == []
    broker.restart()  # the moved log start survives a restart
    assert list_offsets_of(broker.bootstrap, topic, EARLIEST, 1) == {0: len(recs)}
    assert read_from(broker.bootstrap, topic, 0, "earliest") == []


def test_retention_by_bytes_and_by_time(broker_factory: Callable[..., BrokerProcess]) -> None:
    broker = broker_factory(configs={**SMALL, "log.retention.check.interval.ms": "300"})
    by_bytes, by_time = f"rb-{uuid.uuid4().hex[:8]}", f"rt-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, by_bytes, 1, {"retention.bytes": "300000"})
    create_topic(broker.bootstrap, by_time, 1, {"retention.ms": "600000"})
    now = int(time.time() * 1000)
    sized = produce_one_partition(broker.bootstrap, by_bytes, 2000, now)
    old = produce_one_partition(broker.bootstrap, by_time, 1000, now - 3_600_000)  # an hour old: expired
    wait_all_offloaded(broker.bootstrap, by_time, 1)  # its segments close before the young records come
    young = produce_one_partition(broker.bootstrap, by_time, 1000, now, first=len(old))
    for topic in (by_bytes, by_time):
        wait_all_offloaded(broker.bootstrap, topic, 1)

    deadline = time.monotonic() + WAIT
    while list_offsets_of(broker.bootstrap, by_bytes, EARLIEST, 1)[0] == 0 or (
        list_offsets_of(broker.bootstrap, by_time, EARLIEST, 1)[0] < len(old)
    ):
        assert time.monotonic() < deadline, "retention never moved the log start offsets"
        time.sleep(0.3)

    # by size: what is left is under retention.bytes plus the one segment that crosses it
    start = list_offsets_of(broker.bootstrap, by_bytes, EARLIEST, 1)[0]
    left = segment_objects(broker, by_bytes)
    assert left[0][0] == start
    overhead = 4096  # per object: its index and footer (object sizes; the rule counts batch bytes)
    assert sum(size for _base, size in left[1:]) < 300000 + overhead * len(left)
    got = read_from(broker.bootstrap, by_bytes, 0, "earliest")
    assert [g.value for g in got] == [r.value for r in sized[start:]]

    # by time: every segment of the hour-old records is gone, all the young records are still there
    start = list_offsets_of(broker.bootstrap, by_time, EARLIEST, 1)[0]
    assert start == len(old)
    got = read_from(broker.bootstrap, by_time, 0, "earliest")
    assert [g.value for g in got] == [r.value for r in young]
    (res,) = list_offsets_of(broker.bootstrap, by_time, now - 7_200_000, 1).values()
    assert res == len(old)  # the first record at or after a timestamp is the first one kept

    # deleting a topic deletes its segments' objects too
    folder = broker.data_dir / "objects" / "tidelog" / "topics" / topic_id_of(broker.bootstrap, by_bytes) / "0"
    assert list(folder.glob("*.seg"))
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.delete_topics([by_bytes], operation_timeout=30)[by_bytes].result(30)
    deadline = time.monotonic() + WAIT
    while list(folder.glob("*.seg")):
        assert time.monotonic() < deadline, "a deleted topic's segment objects stay"
        time.sleep(0.2)


# --- backpressure -------------------------------------------------------------------------------------


def produce_raw(bootstrap: str, topic: str) -> int:
    """One Produce (a small batch) through Tidelog's asyncio client; returns the partition's error code."""

    async def send() -> int:
        async with KafkaClient(bootstrap) as client:
            conn = await client.any_connection()
            mod = conn.module(0, 3, 9)
            request = make(
                mod.ProduceRequest, transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=30),
                topic_data=(make(mod.TopicProduceData, name=topic,
                                 partition_data=(make(mod.PartitionProduceData, index=0, records=make_batch(3)),)),),
            )  # fmt: skip
            resp = await conn.send(request)
        return int(resp.responses[0].partition_responses[0].error_code)

    return asyncio.run(send())


def test_object_store_stopped_backpressure_then_catch_up(tmp_path: Path) -> None:
    with MotoServer() as moto_server:
        moto_server.create_bucket(BUCKET)
        url = moto_server.s3_url(BUCKET, "stopped", connect_timeout="300ms", request_timeout="1s", max_retries="0",
                                 retry_timeout="1s")  # fmt: skip
        pid = moto_server._proc.pid  # type: ignore[union-attr]  # the moto process, to stop and resume it
        configs = {**SMALL, "offload.bookie.high.water.bytes": "400000"}
        broker = BrokerProcess(tmp_path / "data", configs=configs, extra_args=["--object-store", url]).start()
        try:
            topic, probe = f"bp-{uuid.uuid4().hex[:8]}", f"probe-{uuid.uuid4().hex[:8]}"
            create_topic(broker.bootstrap, topic, 1)
            create_topic(broker.bootstrap, probe, 1)
            os.kill(pid, signal.SIGSTOP)
            resumed = False
            try:
                recs = [Rec(0, f"k{i}".encode(), f"v{i} ".encode() * 200, (), int(time.time() * 1000))
                        for i in range(3000)]  # ~2.4 MB, far past the high-water mark  # fmt: skip
                acked: list[list[tuple[int, int]]] = []
                producer = threading.Thread(
                    target=lambda: acked.append(confluent_produce(broker.bootstrap, topic, recs, **{"linger.ms": 5})),
                    daemon=True,
                )
                producer.start()
                codes: list[int] = []
                deadline = time.monotonic() + WAIT
                while (not codes or codes[-1] != 19) and time.monotonic() < deadline:  # 19: NOT_ENOUGH_REPLICAS
                    codes.append(produce_raw(broker.bootstrap, probe))
                    time.sleep(0.2)
                assert codes[-1] == 19, f"no backpressure while the store is stopped: {codes[-5:]}"
                assert producer.is_alive()  # its records wait: the broker refuses them retriably
            finally:
                os.kill(pid, signal.SIGCONT)
                resumed = True
            producer.join(WAIT)
            assert resumed and not producer.is_alive()
            assert [off for _p, off in acked[0]] == list(range(len(recs)))  # every record acknowledged once
            wait_all_offloaded(broker.bootstrap, topic, 1)
            got = confluent_read(broker.bootstrap, topic, [0], start=0)
            assert [(g.key, g.value) for g in got] == [(r.key, r.value) for r in recs]
            assert produce_raw(broker.bootstrap, probe) == 0  # taken again
        finally:
            broker.close()
