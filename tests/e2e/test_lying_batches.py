"""Batches whose CRC is valid but whose header or records lie are refused with Kafka's error code, append
nothing (the high watermark stays), and the partition stays readable by every client afterwards.

Each lying batch is sent over a raw socket between two good ones; at the end confluent-kafka, kafka-python,
aiokafka and kcat read the partition and find exactly the good records at offsets 0, 1, 2, ...
"""

from __future__ import annotations

import asyncio
import functools
import json
import struct
import subprocess
import time
from dataclasses import dataclass

import cramjam
import crc32c
import pytest
from confluent_kafka import Consumer, TopicPartition

from . import kafka_wire as kw
from .broker_process import BrokerProcess
from .helpers import aiokafka_read, confluent_read, consumer_config, create_topic, high_watermarks, kafka_python_read

# Refusals are logged; no traceback is expected, but the error paths are provoked on purpose.
BROKER_TRACEBACKS_OK = True

CORRUPT_MESSAGE = 2
INVALID_TIMESTAMP = 32
UNSUPPORTED_COMPRESSION_TYPE = 76
INVALID_RECORD = 87
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
VERSION = 9  # flexible Produce: record_errors and error_message are in the response
LYING_TOPIC = "lying-batches"
TS_TOPIC = "lying-timestamps"
LAT_TOPIC = "log-append-time"


# --------------------------------------------------------------------------- wire helpers


@dataclass
class Answer:
    error_code: int
    base_offset: int
    log_append_time: int
    record_errors: list[tuple[int, str | None]]
    error_message: str | None


def _compact_string(buf: bytes, pos: int) -> tuple[str | None, int]:
    n, pos = kw.read_uvarint(buf, pos)
    if n == 0:
        return None, pos
    return buf[pos : pos + n - 1].decode(), pos + n - 1


def _skip_tags(buf: bytes, pos: int) -> int:
    n, pos = kw.read_uvarint(buf, pos)
    for _ in range(n):
        _tag, pos = kw.read_uvarint(buf, pos)
        size, pos = kw.read_uvarint(buf, pos)
        pos += size
    return pos


def parse_answer(resp: bytes) -> Answer:
    """First partition of a Produce v9 response, with its record errors."""
    pos = _skip_tags(resp, 4)
    ntopics, pos = kw.read_uvarint(resp, pos)
    assert ntopics == 2, ntopics
    _name, pos = _compact_string(resp, pos)
    nparts, pos = kw.read_uvarint(resp, pos)
    assert nparts == 2, nparts
    _index, err, base, append_time, _start = struct.unpack_from(">ihqqq", resp, pos)
    pos += 30
    nerr, pos = kw.read_uvarint(resp, pos)
    errors = []
    for _ in range(nerr - 1):
        (batch_index,) = struct.unpack_from(">i", resp, pos)
        msg, pos = _compact_string(resp, pos + 4)
        pos = _skip_tags(resp, pos)
        errors.append((batch_index, msg))
    message, pos = _compact_string(resp, pos)
    return Answer(err, base, append_time, errors, message)


def produce(bootstrap: str, topic: str, records: bytes, version: int = VERSION) -> Answer:
    with kw.connect(bootstrap) as s:
        s.sendall(kw.produce_request(version, topic, 0, records, correlation_id=5))
        resp = kw.recv_frame(s)
    if version == VERSION:
        return parse_answer(resp)
    res = kw.parse_produce_response(version, resp)
    return Answer(res.error_code, res.base_offset, -1, [], None)


def batch(
    body: bytes,
    *,
    count: int,
    last_delta: int | None = None,
    attributes: int = 0,
    base_ts: int | None = None,
    base_offset: int = 0,
    producer_id: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """A v2 batch around the records section ``body`` with the header fields given and a valid CRC."""
    ts = int(time.time() * 1000) if base_ts is None else base_ts
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            count - 1 if last_delta is None else last_delta,
            ts,
            ts,
            producer_id,
            0 if producer_id >= 0 else -1,
            base_sequence,
            count,
        )
        + body
    )
    return struct.pack(">qiibI", base_offset, 9 + len(after_crc), -1, 2, crc32c.crc32c(after_crc)) + after_crc


def records(n: int, tag: str = "bad", deltas: list[int] | None = None) -> bytes:
    return b"".join(
        kw.encode_record(i if deltas is None else deltas[i], kw.Record(f"{tag}-{i}".encode(), b"never appended"))
        for i in range(n)
    )


# --------------------------------------------------------------------------- the lies


@functools.cache
def _lies() -> dict[str, tuple[bytes, int]]:
    one = records(1)
    good = kw.record_batch([kw.Record(b"k", b"v")], int(time.time() * 1000))
    return {
        "codec 7": (batch(one, count=1, attributes=7), UNSUPPORTED_COMPRESSION_TYPE),
        "codec 5": (batch(one, count=1, attributes=5), UNSUPPORTED_COMPRESSION_TYPE),
        "lastOffsetDelta 1,000,000 on one record": (batch(one, count=1, last_delta=1_000_000), INVALID_RECORD),
        "lastOffsetDelta and recordsCount 1,000,001 on one record": (
            batch(one, count=1_000_001, last_delta=1_000_000),
            INVALID_RECORD,
        ),
        "recordsCount 3, 2 records present": (batch(records(2), count=3), INVALID_RECORD),
        "recordsCount 2, 3 records present": (batch(records(3), count=2), INVALID_RECORD),
        "records truncated inside a valid CRC": (batch(records(3)[:-5], count=3), INVALID_RECORD),
        "extra bytes after the records": (batch(records(2) + b"\x00" * 7, count=2), INVALID_RECORD),
        "record length past the batch": (batch(kw.varint(5000) + records(2)[1:], count=2), INVALID_RECORD),
        "offset deltas out of order": (batch(records(3, deltas=[0, 2, 1]), count=3), INVALID_RECORD),
        "offset deltas not from 0": (batch(records(2, deltas=[1, 2]), count=2), INVALID_RECORD),
        "log-append-time batch with a 20 M span": (
            batch(one, count=1, last_delta=20_000_000, attributes=0x08),
            INVALID_RECORD,
        ),
        "log-append-time flag from a producer": (batch(one, count=1, attributes=0x08), INVALID_TIMESTAMP),
        "control batch from a client": (
            batch(one, count=1, attributes=0x20, producer_id=1, base_sequence=0),
            INVALID_RECORD,
        ),
        "transactional batch without a transactional id": (
            batch(one, count=1, attributes=0x10, producer_id=1, base_sequence=0),
            TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        ),
        "producer id without a sequence": (batch(one, count=1, producer_id=1), INVALID_RECORD),
        "two batches in one partition": (good + good, INVALID_RECORD),
        "base offset not 0": (batch(one, count=1, base_offset=77), INVALID_RECORD),
        "zstd garbage": (batch(b"\x28\xb5\x2f\xfd garbage" * 3, count=1, attributes=4), INVALID_RECORD),
        "zstd bomb (1 GiB of zeros in a few KB)": (
            batch(bytes(cramjam.zstd.compress(b"\x00" * (1 << 27))), count=1, attributes=4),
            INVALID_RECORD,
        ),
        "bad CRC": (kw.corrupt_crc(good), CORRUPT_MESSAGE),
    }


LIES = list(_lies())


@pytest.fixture(scope="module")
def bootstrap(module_broker: BrokerProcess) -> str:
    create_topic(module_broker.bootstrap, LYING_TOPIC, 1)
    return module_broker.bootstrap


def high_watermark(bootstrap: str, topic: str) -> int:
    return high_watermarks(bootstrap, topic, [0])[0][1]


GOOD: list[bytes] = []  # values appended to LYING_TOPIC, in order


def produce_good(bootstrap: str, value: bytes) -> None:
    ans = produce(bootstrap, LYING_TOPIC, kw.record_batch([kw.Record(b"good", value)], int(time.time() * 1000)))
    assert ans.error_code == 0, f"a good batch was refused: {ans}"
    assert ans.base_offset == len(GOOD), f"good batch at {ans.base_offset}, expected {len(GOOD)}"
    GOOD.append(value)


@pytest.mark.parametrize("lie", LIES)
def test_lying_batch_is_refused_and_appends_nothing(module_broker: BrokerProcess, bootstrap: str, lie: str) -> None:
    data, code = _lies()[lie]
    produce_good(bootstrap, f"before {lie}".encode())
    before = high_watermark(bootstrap, LYING_TOPIC)
    ans = produce(bootstrap, LYING_TOPIC, data)
    assert ans.error_code == code, f"{lie}: {ans} (want {code})"
    assert ans.base_offset == -1
    assert high_watermark(bootstrap, LYING_TOPIC) == before, f"{lie}: the high watermark moved"
    produce_good(bootstrap, f"after {lie}".encode())
    assert module_broker.running, module_broker.log_tail()


def test_zstd_needs_produce_v7(bootstrap: str) -> None:
    body = bytes(cramjam.zstd.compress(records(2)))
    before = high_watermark(bootstrap, LYING_TOPIC)
    assert produce(bootstrap, LYING_TOPIC, batch(body, count=2, attributes=4), version=6).error_code == (
        UNSUPPORTED_COMPRESSION_TYPE
    )
    assert high_watermark(bootstrap, LYING_TOPIC) == before


def test_every_client_reads_exactly_the_good_records(bootstrap: str, kcat: str) -> None:
    """Runs after the lies: the partition holds the good records only, at offsets 0..n-1, for every client."""
    assert GOOD, "run with the lying-batch tests before it"
    expected = [(i, b"good", v) for i, v in enumerate(GOOD)]
    got = confluent_read(bootstrap, LYING_TOPIC, [0], start=0)
    assert [(g.offset, g.key, g.value) for g in got] == expected
    got = kafka_python_read(bootstrap, LYING_TOPIC, 1)
    assert [(g.offset, g.key, g.value) for g in got] == expected
    got = asyncio.run(aiokafka_read(bootstrap, LYING_TOPIC, 1))
    assert [(g.offset, g.key, g.value) for g in got] == expected
    res = subprocess.run(
        [kcat, "-b", bootstrap, "-C", "-t", LYING_TOPIC, "-p", "0", "-o", "beginning", "-e", "-J", "-q",
         "-X", "check.crcs=true", "-m", "30"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    msgs = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert [(m["offset"], m["key"], m["payload"]) for m in msgs] == [
        (o, k.decode(), v.decode()) for o, k, v in expected
    ]
    # And the raw batches: one record each, nothing else stored.
    raw = kw.fetch_all_batches(bootstrap, LYING_TOPIC, 0)
    assert [(b.base_offset, b.last_offset_delta, b.crc_ok) for b in raw] == [(i, 0, True) for i in range(len(GOOD))]


def offsets_for_time(bootstrap: str, topic: str, ts: int) -> int:
    c = Consumer(consumer_config(bootstrap))
    try:
        [tp] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=30)
    finally:
        c.close()
    assert tp.error is None, tp.error
    return int(tp.offset)


def test_list_offsets_by_timestamp_still_answers(bootstrap: str) -> None:
    assert offsets_for_time(bootstrap, LYING_TOPIC, 0) == 0
    assert offsets_for_time(bootstrap, LYING_TOPIC, int(time.time() * 1000) + 3_600_000) == -1  # past the end


# --------------------------------------------------------------------------- timestamps


def test_timestamps_out_of_the_topic_bounds(bootstrap: str) -> None:
    create_topic(
        bootstrap,
        TS_TOPIC,
        1,
        {"message.timestamp.before.max.ms": "3600000", "message.timestamp.after.max.ms": "60000"},
    )
    now = int(time.time() * 1000)
    for label, base_ts in (("two hours old", now - 7_200_000), ("ten minutes ahead", now + 600_000)):
        ans = produce(bootstrap, TS_TOPIC, batch(records(3), count=3, base_ts=base_ts))
        assert ans.error_code == INVALID_TIMESTAMP, f"{label}: {ans}"
        assert [i for i, _ in ans.record_errors] == [0, 1, 2], f"{label}: record errors {ans.record_errors}"
        assert high_watermark(bootstrap, TS_TOPIC) == 0
    # One record out of bounds refuses the whole batch, naming that record.
    mixed = b"".join(
        kw.encode_record(i, kw.Record(b"k", b"v", timestamp_delta=d)) for i, d in enumerate((0, 0, 900_000))
    )
    ans = produce(bootstrap, TS_TOPIC, batch(mixed, count=3, base_ts=now))
    assert (ans.error_code, [i for i, _ in ans.record_errors]) == (INVALID_TIMESTAMP, [2])
    ok = produce(bootstrap, TS_TOPIC, kw.record_batch([kw.Record(b"k", b"in bounds")], now - 1_000))
    assert (ok.error_code, ok.base_offset) == (0, 0)
    got = confluent_read(bootstrap, TS_TOPIC, [0], start=0)
    assert [(g.offset, g.value, g.timestamp) for g in got] == [(0, b"in bounds", now - 1_000)]


# --------------------------------------------------------------------------- LogAppendTime


def test_log_append_time_topic_stamps_the_broker_time(bootstrap: str) -> None:
    create_topic(bootstrap, LAT_TOPIC, 1, {"message.timestamp.type": "LogAppendTime"})
    t0 = int(time.time() * 1000)
    sent = kw.record_batch([kw.Record(b"a", b"1"), kw.Record(b"b", b"2", timestamp_delta=5)], 1_000)
    ans = produce(bootstrap, LAT_TOPIC, sent)
    t1 = int(time.time() * 1000)
    assert (ans.error_code, ans.base_offset) == (0, 0), ans
    assert t0 - 1 <= ans.log_append_time <= t1 + 1, ans
    [stored] = kw.fetch_all_batches(bootstrap, LAT_TOPIC, 0)
    assert stored.crc_ok and stored.attributes & 0x08 and stored.max_timestamp == ans.log_append_time
    got = confluent_read(bootstrap, LAT_TOPIC, [0], start=0)
    assert [(g.offset, g.value, g.timestamp) for g in got] == [
        (0, b"1", ans.log_append_time),
        (1, b"2", ans.log_append_time),
    ]
    # A producer claiming LogAppendTime itself, with a 20 M offset span, is refused; the time lookup stays cheap.
    lie = batch(records(1), count=1, last_delta=20_000_000, attributes=0x08)
    assert produce(bootstrap, LAT_TOPIC, lie).error_code == INVALID_RECORD
    assert high_watermark(bootstrap, LAT_TOPIC) == 2
    assert offsets_for_time(bootstrap, LAT_TOPIC, ans.log_append_time) == 0
    assert offsets_for_time(bootstrap, LAT_TOPIC, ans.log_append_time + 1) == -1


def test_log_append_time_topic_with_compressed_batches_from_a_real_producer(bootstrap: str) -> None:
    """confluent-kafka (lz4) into a LogAppendTime topic: the stamped batches stay readable by every client, with
    the broker's time as every record's timestamp."""
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Message, Producer

    topic = "log-append-time-lz4"
    create_topic(bootstrap, topic, 1, {"message.timestamp.type": "LogAppendTime"})
    t0 = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": bootstrap, "compression.type": "lz4", "linger.ms": 20, "acks": "all"})
    for i in range(500):
        p.produce(topic, f"v{i}".encode(), key=b"k", partition=0, timestamp=1_000 + i)
    assert p.flush(60) == 0
    t1 = int(time.time() * 1000)
    c = Consumer(consumer_config(bootstrap))
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        msgs: list[Message] = []
        deadline = time.monotonic() + 60
        while len(msgs) < 500 and time.monotonic() < deadline:
            msgs += [m for m in c.consume(500, timeout=0.5) if m.error() is None]
    finally:
        c.close()
    assert [m.value() for m in msgs] == [f"v{i}".encode() for i in range(500)]
    assert {m.timestamp()[0] for m in msgs} == {TIMESTAMP_LOG_APPEND_TIME}
    assert all(t0 - 1 <= m.timestamp()[1] <= t1 + 1 for m in msgs)
    for got in (kafka_python_read(bootstrap, topic, 1), asyncio.run(aiokafka_read(bootstrap, topic, 1))):
        assert [(g.offset, g.value) for g in got] == [(i, f"v{i}".encode()) for i in range(500)]
        assert all(t0 - 1 <= g.timestamp <= t1 + 1 for g in got)


def test_acks_0_lying_batch_closes_the_connection(bootstrap: str) -> None:
    """acks=0 has no response to carry the error: as Kafka does, the broker closes the connection (after
    answering what came before on it) and appends nothing."""
    before = high_watermark(bootstrap, LYING_TOPIC)
    lie = batch(records(1), count=1, last_delta=1_000_000)
    with kw.connect(bootstrap) as s:
        s.sendall(kw.produce_request(VERSION, LYING_TOPIC, 0, lie, correlation_id=9, acks=0))
        assert kw.wait_closed(s, timeout=30) == b""
    assert high_watermark(bootstrap, LYING_TOPIC) == before
    # A good acks=0 batch leaves the connection open: a request after it is answered.
    good = kw.record_batch([kw.Record(b"good", b"acks=0")], int(time.time() * 1000))
    with kw.connect(bootstrap) as s:
        s.sendall(kw.produce_request(VERSION, LYING_TOPIC, 0, good, correlation_id=10, acks=0))
        assert kw.api_versions(s, correlation_id=11)
    assert high_watermark(bootstrap, LYING_TOPIC) == before + 1
    GOOD.append(b"acks=0")


@pytest.mark.parametrize("records_field", [b"", None])
def test_no_record_batch_is_invalid_record(bootstrap: str, records_field: bytes | None) -> None:
    before = high_watermark(bootstrap, LYING_TOPIC)
    body = (
        kw.compact_string(None) + struct.pack(">hi", -1, 30_000) + kw.uvarint(2) + kw.compact_string(LYING_TOPIC)
        + kw.uvarint(2) + struct.pack(">i", 0) + kw.compact_bytes(records_field) + kw.EMPTY_TAGS * 3
    )  # fmt: skip
    with kw.connect(bootstrap) as s:
        s.sendall(kw.request(kw.API_PRODUCE, VERSION, body, 12, flexible=True))
        ans = parse_answer(kw.recv_frame(s))
    assert ans.error_code == INVALID_RECORD, ans
    assert high_watermark(bootstrap, LYING_TOPIC) == before
