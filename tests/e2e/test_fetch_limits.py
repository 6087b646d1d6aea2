"""Issue 13 must-show 2: fetch limits against the real broker process.

A topic of three partitions holds many small batches and two 5 MiB batches (one in the middle of partition 0,
one at the head of partition 2). Raw Fetch requests of every version the broker serves, with max_bytes 1 MiB
and partition_max_bytes 64 KiB, get responses within those limits except the single-oversized-batch rule
(the first batch of the first partition returning data is sent whole, and then nothing else); and consumers
configured that way — librdkafka (confluent-kafka), kafka-python, aiokafka and kafkajs — read every record.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as AioTP
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KpTP
from kio.index import load_payload_module
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from brokers.handlers import fetch, metadata
from brokers.handlers.base import make

from .broker_process import BrokerProcess
from .conftest import NODE_DIR
from .helpers import create_topic
from .kafka_wire import connect, recv_frame, request

FETCH_MAX, PARTITION_MAX = 1 << 20, 64 << 10
BIG = 5 << 20
SMALL = 1000
PARTITIONS = 3
TIMEOUT = 180.0  # hang guards only

Record = tuple[int, int, str, str]  # partition, offset, key, sha1(value)


def _value(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@pytest.fixture(scope="module")
def loaded(module_broker: BrokerProcess) -> Iterator[tuple[str, str, list[Record]]]:
    """The topic and every record in it (partition, offset, key, sha1 of the value), produced by librdkafka
    with a flush around each 5 MiB record so it is a batch of its own."""
    bootstrap = module_broker.bootstrap
    topic = f"limits-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, PARTITIONS, {"max.message.bytes": str(8 << 20)})
    plan: list[list[tuple[int, int]]] = [  # phases of (partition, value size); a flush after each
        [(0, SMALL)] * 300 + [(1, SMALL)] * 300, [(0, BIG), (2, BIG)], [(0, SMALL)] * 300 + [(2, SMALL)] * 300,
        [(1, SMALL)] * 300,
    ]
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8 << 20, "linger.ms": 20,
                         "batch.num.messages": 10, "enable.idempotence": True})  # small batches of ~10 KB
    acked: list[Record] = []
    errors: list[Any] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            key = msg.key().decode()
            acked.append((msg.partition(), msg.offset(), key, hashlib.sha1(msg.value()).hexdigest()))  # noqa: S324

    n = 0
    for phase in plan:
        for partition, size in phase:
            key = f"k{n}"
            n += 1
            producer.produce(topic, _value(key, size), key.encode(), partition=partition, on_delivery=report)
            producer.poll(0)
        assert producer.flush(TIMEOUT) == 0
    assert not errors, errors[:5]
    yield bootstrap, topic, sorted(acked)


# --------------------------------------------------------------------------- raw Fetch, every version


def _call(sock: Any, mod: Any, version: int, req: Any, corr: int) -> Any:
    """Send one kio-encoded request and decode the answer."""
    body = io.BytesIO()
    entity_writer(type(req))(body, req)
    flexible = type(req).__flexible__
    sock.sendall(request(mod.API_KEY, version, body.getvalue(), corr, flexible=flexible))
    frame = recv_frame(sock)
    assert int.from_bytes(frame[:4], "big") == corr
    resp_mod = load_payload_module(mod.API_KEY, version, EntityType.response)
    cls = next(v for v in vars(resp_mod).values() if getattr(v, "__type__", None) == EntityType.response)
    pos = 5 if flexible and mod.API_KEY != 18 else 4  # response header v1 carries a tag buffer
    decoded, _ = entity_reader(cls)(frame[pos:], 0)
    return decoded, len(frame)


def _topic_id(sock: Any, topic: str) -> uuid.UUID:
    m = load_payload_module(metadata.API_KEY, 12, EntityType.request)
    req = m.MetadataRequest(topics=(m.MetadataRequestTopic(name=topic, topic_id=None),),
                            allow_auto_topic_creation=False, include_topic_authorized_operations=False)
    resp, _ = _call(sock, metadata, 12, req, 1)
    return uuid.UUID(str(resp.topics[0].topic_id))


def _batches(records: bytes) -> list[tuple[int, int, int]]:
    """(base offset, last offset, size) of each batch; the records field must hold whole batches only."""
    out, pos = [], 0
    while pos < len(records):
        base = int.from_bytes(records[pos : pos + 8], "big", signed=True)
        size = 12 + int.from_bytes(records[pos + 8 : pos + 12], "big", signed=True)
        assert pos + size <= len(records), "a partial batch was sent"
        last = base + int.from_bytes(records[pos + 23 : pos + 27], "big", signed=True)
        out.append((base, last, size))
        pos += size
    return out


def test_raw_fetch_responses_keep_the_limits_in_every_version(loaded: tuple[str, str, list[Record]]) -> None:
    bootstrap, topic, records = loaded
    ends = {p: max(o for q, o, _k, _h in records if q == p) + 1 for p in range(PARTITIONS)}
    figures: dict[int, tuple[int, int, int]] = {}
    with connect(bootstrap, timeout=TIMEOUT) as sock:
        topic_id = _topic_id(sock, topic)
        corr = 10
        for version in range(fetch.MIN_VERSION, fetch.MAX_VERSION + 1):
            m = load_payload_module(fetch.API_KEY, version, EntityType.request)
            offsets = dict.fromkeys(range(PARTITIONS), 0)
            responses = largest = oversized = 0
            for _round in range(500):  # bounded; ~25 rounds read everything
                if all(offsets[p] >= ends[p] for p in offsets):
                    break
                parts = tuple(make(m.FetchPartition, partition=p, current_leader_epoch=-1, fetch_offset=o,
                                   log_start_offset=-1, last_fetched_epoch=-1, partition_max_bytes=PARTITION_MAX)
                              for p, o in offsets.items() if o < ends[p])
                ref = {"topic_id": topic_id} if version >= 13 else {"topic": topic}
                req = make(m.FetchRequest, replica_id=-1, max_wait=datetime.timedelta(milliseconds=100),
                           min_bytes=1, max_bytes=FETCH_MAX, isolation_level=0, session_id=0, session_epoch=-1,
                           rack_id="", topics=(m.FetchTopic(**ref, partitions=parts),), forgotten_topics_data=())
                corr += 1
                resp, size = _call(sock, fetch, version, req, corr)
                responses += 1
                largest = max(largest, size)
                total, first = 0, True
                for part in resp.responses[0].partitions:
                    assert part.error_code == 0, (version, part)
                    batches = _batches(part.records or b"")
                    got = sum(s for _b, _l, s in batches)
                    if batches and first and batches[0][2] > PARTITION_MAX:
                        assert len(batches) == 1 and total == 0, "an oversized first batch comes alone"
                        oversized += 1
                    else:
                        assert got <= PARTITION_MAX, (version, part.partition_index, got)
                    first = first and not batches
                    total += got
                    if batches:
                        assert batches[0][0] <= offsets[part.partition_index] <= batches[0][1]
                        offsets[part.partition_index] = batches[-1][1] + 1
                assert total <= FETCH_MAX or oversized, (version, total)
                assert size <= max(total, FETCH_MAX) + 4096  # the frame: the records plus small headers
            assert offsets == ends, (version, offsets, ends)
            assert oversized == 2, version  # the two 5 MiB batches, each alone in its response
            figures[version] = (responses, largest, oversized)
    print("fetch version: (responses, largest frame bytes, oversized batches sent alone)", figures)


# --------------------------------------------------------------------------- the four clients


def _check(got: list[Record], records: list[Record], who: str) -> None:
    assert len(got) == len(records), f"{who}: {len(got)} records read of {len(records)}"
    assert sorted(got) == records, f"{who}: the records read differ from those produced"


def test_librdkafka_reads_everything(loaded: tuple[str, str, list[Record]]) -> None:
    bootstrap, topic, records = loaded
    ends = {p: max(o for q, o, _k, _h in records if q == p) + 1 for p in range(PARTITIONS)}
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "limits-unused", "enable.auto.commit": False,
        "fetch.max.bytes": FETCH_MAX, "max.partition.fetch.bytes": PARTITION_MAX,
        # a response carrying one 5 MiB batch must fit what librdkafka accepts (as against Kafka)
        "receive.message.max.bytes": 8 << 20, "check.crcs": True,
    })
    got: list[Record] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        nxt = dict.fromkeys(range(PARTITIONS), 0)
        for _ in range(2000):  # bounded; each consume waits at most 0.5 s
            if all(nxt[p] >= ends[p] for p in nxt):
                break
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                p = msg.partition()
                got.append((p, msg.offset(), msg.key().decode(), hashlib.sha1(msg.value()).hexdigest()))  # noqa: S324
                nxt[p] = msg.offset() + 1
    finally:
        consumer.close()
    _check(got, records, "librdkafka")


def test_kafka_python_reads_everything(loaded: tuple[str, str, list[Record]]) -> None:
    bootstrap, topic, records = loaded
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_bytes=FETCH_MAX, max_partition_fetch_bytes=PARTITION_MAX, check_crcs=True,
                             request_timeout_ms=60_000)
    got: list[Record] = []
    try:
        tps = [KpTP(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        for _ in range(2000):
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=5000).items():
                got.extend((tp.partition, m.offset, m.key.decode(), hashlib.sha1(m.value).hexdigest())  # noqa: S324
                           for m in msgs)
    finally:
        consumer.close()
    _check(got, records, "kafka-python")


def test_aiokafka_reads_everything(loaded: tuple[str, str, list[Record]]) -> None:
    bootstrap, topic, records = loaded

    async def read() -> list[Record]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    fetch_max_bytes=FETCH_MAX, max_partition_fetch_bytes=PARTITION_MAX,
                                    check_crcs=True)
        await consumer.start()
        got: list[Record] = []
        try:
            tps = [AioTP(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            async with asyncio.timeout(TIMEOUT):
                while not all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    for tp, msgs in (await consumer.getmany(timeout_ms=500, max_records=5000)).items():
                        got.extend((tp.partition, m.offset, m.key.decode(),
                                    hashlib.sha1(m.value).hexdigest()) for m in msgs)  # noqa: S324
        finally:
            await consumer.stop()
        return got

    _check(asyncio.run(read()), records, "aiokafka")


def test_kafkajs_reads_everything(loaded: tuple[str, str, list[Record]], node: str, tmp_path: Path) -> None:
    bootstrap, topic, records = loaded
    out = tmp_path / "kafkajs.jsonl"
    res = subprocess.run(
        [node, str(NODE_DIR / "limits.js"), "consume", bootstrap, topic, f"limits-{uuid.uuid4().hex[:6]}",
         str(FETCH_MAX), str(PARTITION_MAX), str(out)],
        capture_output=True, text=True, timeout=TIMEOUT + 60, check=False,
    )
    assert res.returncode == 0, f"kafkajs consume failed ({res.returncode}):\n{res.stderr[-4000:]}"
    got = [tuple(json.loads(line)) for line in out.read_text().splitlines() if line]
    _check([(int(p), int(o), str(k), str(h)) for p, o, k, h in got], records, "kafkajs")
