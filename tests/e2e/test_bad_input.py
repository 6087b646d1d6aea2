"""Bad input over raw sockets: a Kafka error code where the protocol has one, else the connection
is closed — and the broker and every other client carry on. Nothing is lost: a well-behaved
confluent-kafka producer (acks=all) writes throughout the module, and at the end every record it
sent is read back.

Frames are built by hand with ``struct`` (tests/e2e/kafka_wire.py), batches with a real CRC-32C.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from . import kafka_wire as kw
from .broker_process import BrokerProcess
from .helpers import confluent_read, create_topic, high_watermarks

# Error paths are provoked on purpose here; the broker may log them with tracebacks.
BROKER_TRACEBACKS_OK = True

BG_TOPIC = "bad-input-bystander"
BG_PARTS = 3
BG_MAX = 200_000  # bound on the bystander's records
RAW_TOPIC = "bad-input-raw"


class Bystander:
    """A well-behaved producer running during every bad-input test of this module."""

    def __init__(self, bootstrap: str) -> None:
        self.acked: dict[tuple[int, int], bytes] = {}
        self.errors: list[str] = []
        self.sent = 0
        self.stop = threading.Event()
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        self.thread = threading.Thread(target=self._run, daemon=True, name="bystander")

    def _cb(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        if err:
            self.errors.append(str(err))
        else:
            self.acked[(msg.partition(), msg.offset())] = msg.value()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < BG_MAX:
            try:
                self.producer.produce(
                    BG_TOPIC, f"bystander-{i:07d}".encode(), partition=i % BG_PARTS, on_delivery=self._cb
                )
            except BufferError:
                self.producer.poll(0.05)
                continue
            i += 1
            self.sent = i
            if i % 50 == 0:
                self.producer.poll(0)
                time.sleep(0.01)  # ~5k records/s: steady traffic, not a load test
        self.producer.flush(120)


@pytest.fixture(scope="module")
def bystander(module_broker: BrokerProcess) -> Iterator[Bystander]:
    create_topic(module_broker.bootstrap, BG_TOPIC, BG_PARTS)
    create_topic(module_broker.bootstrap, RAW_TOPIC, 1)
    b = Bystander(module_broker.bootstrap)
    b.thread.start()
    yield b
    b.stop.set()
    b.thread.join(150)


@pytest.fixture
def bootstrap(module_broker: BrokerProcess, bystander: Bystander) -> Iterator[str]:
    yield module_broker.bootstrap
    # After every bad input: the broker process is alive and answers a fresh connection.
    assert module_broker.running, f"broker died:\n{module_broker.log_tail()}"
    assert_serves(module_broker.bootstrap)


def assert_serves(bootstrap: str) -> dict[int, tuple[int, int]]:
    with kw.connect(bootstrap) as s:
        ranges = kw.api_versions(s, correlation_id=4242)
    assert kw.API_PRODUCE in ranges and kw.API_FETCH in ranges
    return ranges


def assert_closed(sock: socket.socket, what: str) -> None:
    try:
        leftover = kw.wait_closed(sock, timeout=30)
    except TimeoutError as exc:
        raise AssertionError(f"{what}: the broker kept the connection open") from exc
    assert leftover == b"", f"{what}: expected the connection closed without a response, got {leftover[:100]!r}"


# --------------------------------------------------------------------------- framing


def test_http_request_closes_connection(bootstrap):
    with kw.connect(bootstrap) as s:
        # "GET " read as a length prefix is 1,195,725,856 bytes: far over socket.request.max.bytes.
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert_closed(s, "HTTP request")


def test_garbage_frame_closes_connection(bootstrap):
    with kw.connect(bootstrap) as s:
        s.sendall(kw.frame(b"\xde\xad\xbe\xef" * 16))  # api key 0xdead: no such API
        assert_closed(s, "garbage frame")


@pytest.mark.parametrize("size", [0x7FFFFFFF, -1, -0x80000000, 100 * 1024 * 1024 + 1])
def test_oversized_or_negative_length_prefix_closes_connection(bootstrap, size):
    with kw.connect(bootstrap) as s:
        # Only the prefix and a few bytes are sent: the broker must not wait for (or allocate) 2 GiB.
        s.sendall(struct.pack(">i", size) + b"\x00\x12\x00\x00")
        assert_closed(s, f"length prefix {size}")


def test_zero_length_frame_closes_connection(bootstrap):
    with kw.connect(bootstrap) as s:
        s.sendall(struct.pack(">i", 0))
        assert_closed(s, "zero-length frame")


def test_truncated_frames_then_close(bootstrap):
    # Connection closed mid-frame, at several points (in the prefix, in the header, in the body).
    produce = kw.produce_request(3, RAW_TOPIC, 0, kw.record_batch([kw.Record(b"k", b"never")], 1_000), 1)
    hw_before = high_watermarks(bootstrap, RAW_TOPIC, [0])[0][1]
    for cut in (2, 6, 20, len(produce) - 3):
        s = kw.connect(bootstrap)
        s.sendall(produce[:cut])
        s.close()
    # A connection that stalls mid-frame, then goes away.
    s = kw.connect(bootstrap)
    s.sendall(struct.pack(">i", 1000) + b"\x00" * 10)
    time.sleep(0.2)
    s.close()
    assert_serves(bootstrap)
    assert high_watermarks(bootstrap, RAW_TOPIC, [0])[0][1] == hw_before, "a truncated Produce appended records"


def test_unknown_api_key_closes_connection(bootstrap):
    for key in (9999, 32767, -5):
        with kw.connect(bootstrap) as s:
            s.sendall(kw.request(key, 0, b"\x00" * 8, correlation_id=11))
            assert_closed(s, f"api key {key}")


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", [127, 32767])
def test_api_versions_unsupported_version_answers_v0_error(bootstrap, version):
    with kw.connect(bootstrap) as s:
        # Newer ApiVersions versions are flexible (request header v2); the broker cannot know the
        # body layout of a version it does not support, so it answers in the v0 format.
        body = kw.compact_string("future-client") + kw.compact_string("9.9") + kw.EMPTY_TAGS
        s.sendall(kw.request(kw.API_API_VERSIONS, version, body, correlation_id=31, flexible=True))
        resp = kw.parse_api_versions_v0(kw.recv_frame(s))
        assert resp.correlation_id == 31
        assert resp.error_code == kw.ERR_UNSUPPORTED_VERSION
        assert resp.trailing == b"", f"body longer than the v0 layout: {resp.trailing!r}"
        assert kw.API_API_VERSIONS in resp.ranges, "the error must list at least ApiVersions' own range"
        lo, hi = resp.ranges[kw.API_API_VERSIONS]
        assert 0 <= lo <= 3 <= hi < version
        for key, (a, b) in resp.ranges.items():
            assert 0 <= a <= b, f"api {key}: bad range {a}..{b}"
        # The connection stays usable: the client retries with a version from the list.
        ranges = kw.api_versions(s, correlation_id=32)
        assert ranges[kw.API_API_VERSIONS] == (lo, hi)


def test_unsupported_produce_version_closes_or_errors(bootstrap):
    batch = kw.record_batch([kw.Record(b"k", b"v")], 1_000)
    with kw.connect(bootstrap) as s:
        # Produce v99: header v1 (the broker cannot know a newer layout), a v3-shaped body.
        s.sendall(kw.request(kw.API_PRODUCE, 99, kw.produce_body(3, RAW_TOPIC, 0, batch), correlation_id=55))
        try:
            resp = kw.recv_frame(s)
        except kw.Closed:
            return  # closing the connection is Kafka's answer
        (corr,) = struct.unpack_from(">i", resp, 0)
        assert corr == 55, "a response, if any, must carry the request's correlation id"
        assert struct.pack(">h", kw.ERR_UNSUPPORTED_VERSION) in resp, f"no UNSUPPORTED_VERSION in {resp[:80]!r}"


# --------------------------------------------------------------------------- record batches


def produce_raw(sock: socket.socket, version: int, batch: bytes, corr: int) -> kw.ProducePartitionResult:
    sock.sendall(kw.produce_request(version, RAW_TOPIC, 0, batch, corr))
    res = kw.parse_produce_response(version, kw.recv_frame(sock))
    assert res.correlation_id == corr
    assert (res.topic, res.partition) == (RAW_TOPIC, 0)
    return res


def test_bad_crc_is_corrupt_message_and_nothing_is_appended(bootstrap):
    ts = int(time.time() * 1000) - 60_000
    good1 = kw.record_batch([kw.Record(b"key-1", b"value-1", [("h", b"1")]), kw.Record(None, b"value-2", [], 7)], ts)
    good2 = kw.record_batch([kw.Record(b"key-3", b"", [("a", b""), ("a", b"\x00\xff")], 0)], ts + 100)
    with kw.connect(bootstrap) as s:
        version = kw.pick_version(kw.api_versions(s), kw.API_PRODUCE, 3, 12)
        start = high_watermarks(bootstrap, RAW_TOPIC, [0])[0][1]

        ok = produce_raw(s, version, good1, 1)
        assert ok.error_code == kw.ERR_NONE, f"a valid hand-built batch was refused: {ok}"
        assert ok.base_offset == start

        for i, bad in enumerate((kw.corrupt_crc(good2), kw.corrupt_payload(good2))):
            res = produce_raw(s, version, bad, 10 + i)
            assert res.error_code == kw.ERR_CORRUPT_MESSAGE, f"Produce v{version} with a bad CRC: {res}"

        # batchLength claims more bytes than the records field holds.
        short = good2[:-5]
        res = produce_raw(s, version, short, 20)
        assert res.error_code in (kw.ERR_CORRUPT_MESSAGE, 87), f"truncated batch: {res} (want 2 or 87)"

        # The connection is still usable and the offsets were not consumed by the refused batches.
        ok2 = produce_raw(s, version, good2, 30)
        assert ok2.error_code == kw.ERR_NONE
        assert ok2.base_offset == start + 2

    got = confluent_read(bootstrap, RAW_TOPIC, [0], start=start)
    assert [(g.offset, g.key, g.value, g.headers, g.timestamp) for g in got] == [
        (start, b"key-1", b"value-1", (("h", b"1"),), ts),
        (start + 1, None, b"value-2", (), ts + 7),
        (start + 2, b"key-3", b"", (("a", b""), ("a", b"\x00\xff")), ts + 100),
    ]


def test_batch_over_message_max_bytes_is_message_too_large(bootstrap):
    big = kw.record_batch([kw.Record(b"big", b"\x01" * (1024 * 1024 + 100))], int(time.time() * 1000))
    with kw.connect(bootstrap) as s:
        version = kw.pick_version(kw.api_versions(s), kw.API_PRODUCE, 3, 12)
        before = high_watermarks(bootstrap, RAW_TOPIC, [0])[0][1]
        res = produce_raw(s, version, big, 77)
        assert res.error_code == 10, f"batch over message.max.bytes (1048588): {res} (want MESSAGE_TOO_LARGE)"
    assert high_watermarks(bootstrap, RAW_TOPIC, [0])[0][1] == before


# --------------------------------------------------------------------------- nothing lost


def test_bystander_producer_lost_nothing(module_broker, bystander):
    """Runs last in this module: stops the bystander and reads every record it was acked for."""
    time.sleep(0.5)
    bystander.stop.set()
    bystander.thread.join(150)
    assert not bystander.thread.is_alive()
    assert not bystander.errors, f"bystander delivery errors: {bystander.errors[:5]}"
    assert bystander.sent > 0
    assert len(bystander.acked) == bystander.sent, f"acked {len(bystander.acked)} of {bystander.sent}"
    got = confluent_read(module_broker.bootstrap, BG_TOPIC, range(BG_PARTS), start=0)
    stored = {(g.partition, g.offset): g.value for g in got}
    missing = [k for k, v in bystander.acked.items() if stored.get(k) != v]
    assert not missing, f"{len(missing)} acked bystander records missing, e.g. {missing[:5]}"
    assert len(got) == bystander.sent
