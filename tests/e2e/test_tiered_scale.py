"""Must-show 2 of issue 5 at full scale, through a real ``tidelog run`` process and confluent-kafka: 2 GiB
produced into a topic with 8 MiB ledgers, all offloaded and all ledgers deleted (the bookie's journal
directory shrinks back to about one journal file), then read back byte-exact by hash (never held in memory)
from offset 0 while new records are produced at the tail, and from the middle found by timestamp.

Run twice: on moto S3 over HTTP (the issue's endpoint; moto keeps the 2 GiB in its own memory) and on the
embedded default, the local directory (DATA/objects).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import PartitionState
from storage.bookie.bookie import Bookie
from storage.objectstore import open_object_store
from storage.segment.catalog import list_segments
from tests.moto_server import MotoServer

from .broker_process import BrokerProcess
from .helpers import consumer_config, create_topic
from .test_tiered import stored_topic_id, wait_all_offloaded

TOTAL = 2 * 1024**3
VALUE = 16 * 1024
COUNT = TOTAL // VALUE  # 131072 records
TAIL = 2000  # records produced at the tail during the replay
WAIT = 600.0  # hang guard only
BUCKET = "tidelog-scale"  # created by the conftest's moto fixture
CONFIGS = {
    "offload.enable": "true",
    "ledger.rollover.bytes": str(8 * 1024 * 1024),
    "ledger.rollover.ms": "2000",
    "num.partitions": "1",
    "message.max.bytes": str(8 * 1024 * 1024),
}
BLOCK = random.Random(2).randbytes(1 << 20)


def value_of(i: int) -> bytes:
    """Record ``i``'s value: its number, then 16 KiB cut from a fixed random block (cheap, distinct)."""
    start = (i * 7919) % (len(BLOCK) - VALUE)
    return f"{i:016d}".encode() + BLOCK[start : start + VALUE - 16]


def expected_hash(first: int, end: int) -> str:
    h = hashlib.sha256()
    for i in range(first, end):
        h.update(value_of(i))
    return h.hexdigest()


def produce(bootstrap: str, topic: str, first: int, end: int, base_ts: int) -> None:
    """Records ``first``..``end``-1 (idempotent, acks=all); each must land at offset == its number."""
    wrong: list[tuple[int, int]] = []
    failed: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            failed.append(str(err))
            return
        i = int(msg.value()[:16])  # type: ignore[attr-defined]
        if msg.offset() != i:  # type: ignore[attr-defined]
            wrong.append((i, msg.offset()))  # type: ignore[attr-defined]

    p = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 20,
        "batch.size": 1_000_000, "message.max.bytes": 1_100_000, "queue.buffering.max.kbytes": 262_144,
    })  # fmt: skip
    for i in range(first, end):
        while True:
            try:
                p.produce(topic, value=value_of(i), partition=0, timestamp=base_ts + i, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(WAIT) == 0
    assert not failed and not wrong, (failed[:3], wrong[:3])


def read_hash(bootstrap: str, topic: str, start: int, end: int) -> tuple[str, float]:
    """SHA-256 of the values at offsets ``start``..``end``-1, checking they are contiguous; and MB/s."""
    c = Consumer(consumer_config(bootstrap, **{"fetch.max.bytes": 52_428_800, "queued.max.messages.kbytes": 262_144}))
    h = hashlib.sha256()
    began = time.monotonic()
    size = 0
    try:
        c.assign([TopicPartition(topic, 0, start)])
        nxt = start
        deadline = time.monotonic() + WAIT
        while nxt < end:
            assert time.monotonic() < deadline, f"read stuck at offset {nxt} of {end}"
            for m in c.consume(1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == -191:  # _PARTITION_EOF
                        continue
                    raise KafkaException(err)
                if m.offset() >= end:
                    continue
                assert m.offset() == nxt, f"offset {m.offset()} read where {nxt} was expected"
                value = m.value()
                h.update(value)
                size += len(value)
                nxt += 1
    finally:
        c.close()
    return h.hexdigest(), size / 1e6 / (time.monotonic() - began)


def check_all_in_segments(data_dir: Path, topic: str, end: int) -> int:
    """With the broker stopped: segments cover offsets 0..``end``-1 contiguously, the partition state holds
    only offloaded refs, and the bookie holds no entry of any segment's ledger. Returns the segment count."""

    async def check() -> int:
        keys = Keys("tidelog")
        store = await EmbeddedMetadataStore.open(data_dir / "metadata")
        try:
            topic_id = await stored_topic_id(store, keys, topic)
            segments = await list_segments(store, keys, topic_id, 0)
            assert segments[0].base_offset == 0 and segments[-1].last_offset == end - 1
            assert all(a.last_offset + 1 == b.base_offset for a, b in itertools.pairwise(segments))
            state = await store.get(keys.partition(topic_id, 0))
            assert state is not None
            refs = PartitionState.decode(state.value).ledgers
            assert all(r.offloaded for r in refs), refs
        finally:
            await store.close()
        bookie = await Bookie.open(data_dir / "bookie")
        try:
            held = [s.ledger_id for s in segments if bookie.entry_location(s.ledger_id, 0) is not None]
            assert held == [], f"{len(held)} offloaded ledgers still on the bookie"
        finally:
            await bookie.close()
        return len(segments)

    return asyncio.run(check())


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def store_bytes(url: str) -> int:
    """Bytes of every object in the store at ``url``."""

    async def total() -> int:
        store = open_object_store(url)
        try:
            return sum(meta.size for meta in await store.list(""))
        finally:
            await store.close()

    return asyncio.run(total())


@pytest.mark.slow
@pytest.mark.parametrize("where", ["s3", "local"])
def test_2gib_offloaded_and_read_back(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    data_dir = tmp_path / "data"
    if where == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        url = moto.s3_url(BUCKET, f"scale-{uuid.uuid4().hex[:8]}")
    else:
        url = str(data_dir / "objects")
    broker = BrokerProcess(data_dir, configs=CONFIGS, extra_args=["--object-store", url]).start()
    topic = f"big-{uuid.uuid4().hex[:8]}"
    base_ts = int(time.time() * 1000) - 10 * COUNT
    started = time.monotonic()
    try:
        create_topic(broker.bootstrap, topic, 1)
        peak = [0]
        producing = threading.Event()

        def sample() -> None:  # the bookie directory's largest size while the 2 GiB go in
            while not producing.wait(0.2):
                peak[0] = max(peak[0], dir_bytes(data_dir / "bookie"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        produce(broker.bootstrap, topic, 0, COUNT, base_ts)
        producing.set()
        sampler.join(WAIT)
        produced = time.monotonic()
        after = dir_bytes(data_dir / "bookie")
        wait_all_offloaded(broker.bootstrap, topic, parts=1)
        offloaded = time.monotonic()
        deadline = time.monotonic() + WAIT
        while (bookie := dir_bytes(data_dir / "bookie")) > 80 * 1024**2:  # about one 64 MiB journal file
            assert time.monotonic() < deadline, f"bookie still holds {bookie} bytes"
            time.sleep(1.0)
        objects = store_bytes(url)
        assert objects >= TOTAL

        # from offset 0, while new records are produced at the tail
        tail = threading.Thread(target=produce, args=(broker.bootstrap, topic, COUNT, COUNT + TAIL, base_ts))
        tail.start()
        full, full_mbs = read_hash(broker.bootstrap, topic, 0, COUNT + TAIL)
        tail.join(WAIT)
        assert not tail.is_alive()
        assert full == expected_hash(0, COUNT + TAIL)

        # from the middle, found by timestamp
        c = Consumer(consumer_config(broker.bootstrap))
        try:
            (found,) = c.offsets_for_times([TopicPartition(topic, 0, base_ts + COUNT // 2)], timeout=30)
        finally:
            c.close()
        assert found.offset == COUNT // 2
        half, half_mbs = read_hash(broker.bootstrap, topic, COUNT // 2, COUNT)
        assert half == expected_hash(COUNT // 2, COUNT)
        wait_all_offloaded(broker.bootstrap, topic, parts=1)  # the tail records too
        broker.stop()
        segments = check_all_in_segments(data_dir, topic, COUNT + TAIL)
        print(  # figures for the report (pytest -s)
            f"\n{where}: produced {TOTAL / 1e9:.2f} GB in {produced - started:.1f}s; "
            f"bookie dir peak {peak[0] / 1e6:.0f} MB, "
            f"{after / 1e6:.0f} MB after; "
            f"all offloaded after {offloaded - started:.1f}s; bookie dir then {bookie / 1e6:.1f} MB; "
            f"objects {objects / 1e6:.0f} MB in {segments} segments; read from 0 + tail at {full_mbs:.0f} MB/s; "
            f"from the middle at {half_mbs:.0f} MB/s; total {time.monotonic() - started:.1f}s"
        )
    finally:
        broker.close()
