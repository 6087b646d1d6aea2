"""Must-shows 3 and 4 of issue 5, through a real ``tidelog run`` process, moto S3 over HTTP and confluent-kafka.

Kill -9 of the broker at random points during offload:

A producer (acks=all) writes into one partition with small ledgers (64 KiB, 300 ms age rollover) and offload
on, so ledgers close and are offloaded all the time; after a seeded random delay the broker is killed with
SIGKILL and restarted on the same data directory, again and again. Then a final run with a short
``offload.gc.interval.ms`` offloads everything and collects orphans. Checked: every acknowledged record reads
back byte-exact at its offset; the segment keys in the broker's own metadata store (opened after the stop)
have unique, contiguous base offsets from 0; the objects under the partition prefix are exactly the objects
the segment keys name (orphans left by the kills are gone).

The object store stopped for 60 s under load (moto SIGSTOPped while a producer runs): the broker answers
NOT_ENOUGH_REPLICAS (retriable) once the bookies hold more than ``offload.bookie.high.water.bytes`` waiting for
offload, nothing acknowledged is lost, and once the store is back every closed ledger is offloaded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Producer

from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import OffloadIntent, SegmentRecord
from storage.objectstore import open_object_store
from storage.segment.format import partition_prefix
from tests.moto_server import MotoServer

from .broker_process import BrokerProcess
from .helpers import confluent_read, create_topic
from .test_tiered import produce_raw, stored_topic_id, wait_all_offloaded

BUCKET = "tidelog-faults"
WAIT = 120.0  # hang guard only
RATE = 3000  # records a second
CONFIGS = {
    "offload.enable": "true",
    "ledger.rollover.bytes": "65536",
    "ledger.rollover.ms": "300",
    "tail.cache.bytes.per.partition": "65536",
    "num.partitions": "1",
}


@dataclass
class Acked:
    """Records the broker acknowledged: offset -> value (each value is unique)."""

    by_offset: dict[int, bytes] = field(default_factory=dict)
    failed: int = 0


def produce_until_killed(broker: BrokerProcess, topic: str, tag: str, delay: float, acked: Acked) -> int:
    """Produce (acks=all) until ``delay`` seconds have passed, then kill -9 the broker; delivery reports
    received before the kill are acknowledgements. Returns how many records were sent."""
    producer = Producer({
        "bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5, "message.timeout.ms": 2000,
        "socket.timeout.ms": 2000, "reconnect.backoff.max.ms": 200,
    })  # fmt: skip

    def on_delivery(err: object, msg: object) -> None:
        if err is None:
            offset = msg.offset()  # type: ignore[attr-defined]
            value = msg.value()  # type: ignore[attr-defined]
            assert acked.by_offset.setdefault(offset, value) == value, f"offset {offset} acknowledged twice"
        else:
            acked.failed += 1

    sent = 0
    begin = time.monotonic()
    while (elapsed := time.monotonic() - begin) < delay:
        if sent >= RATE * elapsed:  # about 2.7 MB/s: some 40 ledgers close (and are offloaded) a second
            producer.poll(0.002)
            continue
        value = f"{tag}-{sent:08d}-".encode() + bytes([sent % 251]) * 900
        try:
            producer.produce(topic, value=value, partition=0, on_delivery=on_delivery)
            sent += 1
        except BufferError:
            producer.poll(0.01)
        producer.poll(0)
    broker.kill9()
    producer.flush(15.0)  # the rest fail (broker down): not acknowledged
    return sent


async def partition_objects(data_dir: Path, url: str, topic: str) -> tuple[list[SegmentRecord], set[str], set[str]]:
    """With the broker stopped: (segment records by base offset, object keys under the partition prefix,
    object keys named by offload intents)."""
    keys = Keys("tidelog")
    store = await EmbeddedMetadataStore.open(data_dir / "metadata")
    try:
        topic_id = await stored_topic_id(store, keys, topic)
        segments = sorted(
            (SegmentRecord.decode(v.value) for v in await store.list(keys.segments_prefix(topic_id, 0))),
            key=lambda r: r.base_offset,
        )
        intents = {OffloadIntent.decode(v.value).object_key for v in
                   await store.list(keys.offload_intents_prefix(topic_id, 0))}  # fmt: skip
    finally:
        await store.close()
    objects = open_object_store(url)
    listed = {m.key for m in await objects.list(partition_prefix(keys.cluster, topic_id, 0))}
    return segments, listed, intents


def run_kills(tmp_path: Path, moto: MotoServer, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    url = moto.s3_url(BUCKET, f"k-{uuid.uuid4().hex[:8]}")
    data_dir = tmp_path / "data"
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    broker = BrokerProcess(data_dir, configs=CONFIGS, extra_args=["--object-store", url])
    acked = Acked()
    started = time.monotonic()
    try:
        broker.start()
        create_topic(broker.bootstrap, topic, 1)
        sent = 0
        for round_ in range(kills):
            if round_:
                broker.start()
            sent += produce_until_killed(broker, topic, f"r{round_}", rng.uniform(0.3, 2.5), acked)
        kill_secs = time.monotonic() - started
        segments, listed, intents = asyncio.run(partition_objects(data_dir, url, topic))
        orphans_before = listed - {s.object_key for s in segments} - intents
        # and one more, as a crash between upload and commit of a ledger that then left the log leaves it
        objects = open_object_store(url)
        planted = f"{url_prefix_of({segments[0].object_key})}{10**12:020d}-999999999.seg"
        asyncio.run(objects.put(planted, b"orphan"))
        orphans_before |= {planted}

        # a final run with a short GC interval: everything is offloaded, and the orphans are collected
        broker.configs["offload.gc.interval.ms"] = "300"
        broker.start()
        wait_all_offloaded(broker.bootstrap, topic, parts=1)
        got = confluent_read(broker.bootstrap, topic, [0], start=0)
        deadline = time.monotonic() + WAIT
        while True:
            now = {m.key for m in asyncio.run(objects.list(url_prefix_of(orphans_before)))}
            if not now & orphans_before:
                break
            assert time.monotonic() < deadline, f"orphans not collected after {WAIT}s: {now & orphans_before}"
            time.sleep(0.2)
        broker.stop()

        by_offset = {g.offset: g.value for g in got}
        assert len(by_offset) == len(got), "an offset was read twice"
        assert sorted(by_offset) == list(range(len(got))), "offsets are not contiguous from 0"
        lost = [o for o, v in acked.by_offset.items() if by_offset.get(o) != v]
        assert not lost, f"{len(lost)} acknowledged records lost or changed, first at offsets {sorted(lost)[:5]}"

        segments, listed, intents = asyncio.run(partition_objects(data_dir, url, topic))
        bases = [s.base_offset for s in segments]
        assert len(bases) == len(set(bases)), "a segment is listed twice in metadata"
        assert bases[0] == 0 and segments[-1].last_offset == len(got) - 1
        assert all(a.last_offset + 1 == b.base_offset for a, b in itertools.pairwise(segments))
        assert listed == {s.object_key for s in segments}, "objects differ from those the segment keys name"
        assert not intents, f"offload intents left after everything was offloaded: {intents}"
        print(  # figures for the report (pytest -s)
            f"\nkills={kills} seed={seed} sent={sent} acked={len(acked.by_offset)} failed={acked.failed} "
            f"read={len(got)} segments={len(segments)} orphans_collected={len(orphans_before)} (1 planted) "
            f"kill_phase={kill_secs:.1f}s total={time.monotonic() - started:.1f}s"
        )
    finally:
        broker.close()


def url_prefix_of(keys: set[str]) -> str:
    """The partition prefix shared by ``keys`` (all under one partition)."""
    return next(iter(keys)).rsplit("/", 1)[0] + "/"


@pytest.mark.slow  # make test: tests/integration/test_offload_kill9.py kills 24 times during offload
def test_kill9_during_offload_fast(tmp_path: Path, moto: MotoServer) -> None:
    run_kills(tmp_path, moto, kills=6, seed=5)


@pytest.mark.slow
def test_kill9_during_offload_20_times(tmp_path: Path, moto: MotoServer) -> None:
    run_kills(tmp_path, moto, kills=24, seed=20261122)


class LoadProducer(threading.Thread):
    """Produces (acks=all, retried for minutes) at RATE records a second until stopped; keeps the acks."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.acked = Acked()
        self.sent = 0
        self.done = threading.Event()
        self.unflushed = -1

    def run(self) -> None:
        producer = Producer({
            "bootstrap.servers": self.bootstrap, "acks": "all", "linger.ms": 5, "message.timeout.ms": 300_000,
            "queue.buffering.max.messages": 20_000,
        })  # fmt: skip

        def on_delivery(err: object, msg: object) -> None:
            if err is None:
                self.acked.by_offset[msg.offset()] = msg.value()  # type: ignore[attr-defined]
            else:
                self.acked.failed += 1

        begin = time.monotonic()
        while not self.done.is_set():
            if self.sent >= RATE / 3 * (time.monotonic() - begin):
                producer.poll(0.005)
                continue
            value = f"load-{self.sent:08d}-".encode() + bytes([self.sent % 251]) * 900
            try:
                producer.produce(self.topic, value=value, partition=0, on_delivery=on_delivery)
                self.sent += 1
            except BufferError:
                producer.poll(0.05)
            producer.poll(0)
        self.unflushed = producer.flush(WAIT)


@pytest.mark.slow
def test_object_store_stopped_60s_under_load(tmp_path: Path) -> None:
    stop_secs = 60.0
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        url = server.s3_url(BUCKET, "stopped", connect_timeout="300ms", request_timeout="1s", max_retries="0",
                            retry_timeout="1s")  # fmt: skip
        pid = server._proc.pid  # type: ignore[union-attr]  # the moto process, to stop and resume it
        configs = {**CONFIGS, "offload.bookie.high.water.bytes": "2000000"}
        broker = BrokerProcess(tmp_path / "data", configs=configs, extra_args=["--object-store", url]).start()
        topic, probe = f"load-{uuid.uuid4().hex[:8]}", f"probe-{uuid.uuid4().hex[:8]}"
        load = LoadProducer(broker.bootstrap, topic)
        started = time.monotonic()
        try:
            create_topic(broker.bootstrap, topic, 1)
            create_topic(broker.bootstrap, probe, 1)
            load.start()
            time.sleep(3.0)  # load flowing and offloading before the store stops
            before = len(load.acked.by_offset)
            os.kill(pid, signal.SIGSTOP)
            codes: list[int] = []
            try:
                stop_end = time.monotonic() + stop_secs
                while time.monotonic() < stop_end:
                    codes.append(produce_raw(broker.bootstrap, probe))
                    time.sleep(1.0)
                during = len(load.acked.by_offset) - before
            finally:
                os.kill(pid, signal.SIGCONT)
            refused = codes.count(19)  # NOT_ENOUGH_REPLICAS: retriable; the client retries it
            assert refused > 0, f"no backpressure while the store was stopped: {codes}"
            assert set(codes) <= {0, 19}, codes
            time.sleep(5.0)  # load keeps flowing after the store is back
            load.done.set()
            load.join(WAIT + 10)
            assert not load.is_alive() and load.unflushed == 0 and load.acked.failed == 0
            wait_all_offloaded(broker.bootstrap, topic, parts=1)  # offload caught up: every ledger offloaded
            caught_up = time.monotonic()
            assert produce_raw(broker.bootstrap, probe) == 0  # taken again
            got = confluent_read(broker.bootstrap, topic, [0], start=0)
            by_offset = {g.offset: g.value for g in got}
            assert sorted(by_offset) == list(range(len(got)))
            lost = [o for o, v in load.acked.by_offset.items() if by_offset.get(o) != v]
            assert not lost, f"{len(lost)} acknowledged records lost or changed, first {sorted(lost)[:5]}"
            assert len(load.acked.by_offset) == load.sent  # every record sent was acknowledged in the end
            print(  # figures for the report (pytest -s)
                f"\nstopped={stop_secs:.0f}s sent={load.sent} acked_before={before} acked_while_stopped={during} "
                f"probes={len(codes)} refused={refused} read={len(got)} "
                f"caught_up_at={caught_up - started:.1f}s total={time.monotonic() - started:.1f}s"
            )
        finally:
            load.done.set()
            broker.close()
