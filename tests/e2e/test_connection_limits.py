"""The connection layer against a real broker process over raw sockets (issue 9): memory stays bounded and
is given back when a client pipelines big fetches and never reads; requests pipelined on one connection see
the effects of the ones before them; idle connections and half-sent frames are closed, long polls are not;
other clients are served while one does not read.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from . import kafka_wire as kw
from .broker_process import BrokerProcess
from .helpers import create_topic

MiB = 1024 * 1024

API_DELETE_RECORDS = 21
API_CREATE_TOPICS = 19
API_CREATE_PARTITIONS = 37
EARLIEST = -2

# Big-fetch test: data outside the tail cache and on the bookie (offload off: every read makes new buffers).
DATA_BYTES = 48 * MiB
RECORD_BYTES = 1000
FETCH_BYTES = 50 * MiB
BUDGET = 32 * MiB  # fetch.response.memory.bytes
CONSTANT = 96 * MiB
"""Allowance over base + budget: a read run of ledger entries, one connection's queued-response bound, socket
and transport buffers, allocator slack. The measured peak is printed."""
PIPELINED = 100
MEMORY_CONFIGS = {
    "offload.enable": "false",
    "tail.cache.bytes.per.partition": str(MiB),
    "ledger.rollover.bytes": str(8 * MiB),
    "fetch.response.memory.bytes": str(BUDGET),
}


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# --------------------------------------------------------------------------- raw requests (non-flexible)


def _array(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


def delete_records_request(topic: str, partition: int, offset: int, corr: int) -> bytes:
    body = _array([kw.string(topic) + _array([struct.pack(">iq", partition, offset)])]) + struct.pack(">i", 30000)
    return kw.request(API_DELETE_RECORDS, 1, body, corr)


def parse_delete_records(resp: bytes) -> tuple[int, int, int]:
    """(correlation id, low watermark, error code) of the first partition."""
    corr, _throttle, _n = struct.unpack_from(">iii", resp, 0)
    (slen,) = struct.unpack_from(">h", resp, 12)
    pos = 14 + slen + 4
    _part, low, err = struct.unpack_from(">iqh", resp, pos)
    return corr, low, err


def list_offsets_request(topic: str, partition: int, timestamp: int, corr: int) -> bytes:
    body = struct.pack(">ib", -1, 0) + _array([kw.string(topic) + _array([struct.pack(">iq", partition, timestamp)])])
    return kw.request(kw.API_LIST_OFFSETS, 2, body, corr)


def parse_list_offsets(resp: bytes) -> tuple[int, int, int]:
    """(correlation id, offset, error code) of the first partition."""
    corr, _throttle, _n = struct.unpack_from(">iii", resp, 0)
    (slen,) = struct.unpack_from(">h", resp, 12)
    pos = 14 + slen + 4
    _part, err, _ts, offset = struct.unpack_from(">ihqq", resp, pos)
    return corr, offset, err


def create_topics_request(topic: str, partitions: int, corr: int) -> bytes:
    spec = kw.string(topic) + struct.pack(">ih", partitions, 1) + _array([]) + _array([])
    return kw.request(API_CREATE_TOPICS, 2, _array([spec]) + struct.pack(">ib", 30000, 0), corr)


def create_partitions_request(topic: str, count: int, corr: int) -> bytes:
    spec = kw.string(topic) + struct.pack(">ii", count, -1)
    return kw.request(API_CREATE_PARTITIONS, 1, _array([spec]) + struct.pack(">ib", 30000, 0), corr)


def parse_topic_result(resp: bytes) -> tuple[int, int]:
    """(correlation id, error code) of the first topic of a CreateTopics v2 / CreatePartitions v1 answer."""
    corr, _throttle, _n = struct.unpack_from(">iii", resp, 0)
    (slen,) = struct.unpack_from(">h", resp, 12)
    (err,) = struct.unpack_from(">h", resp, 14 + slen)
    return corr, err


def metadata_request(topic: str, corr: int) -> bytes:
    """Metadata v4 for one topic, without auto-creation."""
    return kw.request(kw.API_METADATA, 4, _array([kw.string(topic)]) + struct.pack(">b", 0), corr)


def parse_metadata(resp: bytes) -> tuple[int, int, int]:
    """(correlation id, error code, partition count) of the first topic."""
    corr, _throttle, nbrokers = struct.unpack_from(">iii", resp, 0)
    pos = 12
    for _ in range(nbrokers):
        (hlen,) = struct.unpack_from(">h", resp, pos + 4)
        pos += 4 + 2 + hlen + 4
        (rlen,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + max(rlen, 0)
    (clen,) = struct.unpack_from(">h", resp, pos)
    pos += 2 + max(clen, 0) + 4  # cluster id, controller id
    (ntopics,) = struct.unpack_from(">i", resp, pos)
    assert ntopics == 1, ntopics
    err, tlen = struct.unpack_from(">hh", resp, pos + 4)
    pos += 4 + 4 + tlen + 1
    (nparts,) = struct.unpack_from(">i", resp, pos)
    return corr, err, nparts


def pipelined(bootstrap: str, frames: list[bytes]) -> list[bytes]:
    """Send ``frames`` back to back in one write on one connection, then read every answer."""
    with kw.connect(bootstrap) as sock:
        sock.sendall(b"".join(frames))
        return [kw.recv_frame(sock) for _ in frames]


# --------------------------------------------------------------------------- ordering


@pytest.fixture(scope="module")
def order_broker(module_broker: BrokerProcess) -> BrokerProcess:
    return module_broker


def test_delete_records_then_list_offsets_sees_the_new_start(order_broker: BrokerProcess) -> None:
    topic = f"order-dr-{uuid.uuid4().hex[:8]}"
    create_topic(order_broker.bootstrap, topic, 1)
    with kw.connect(order_broker.bootstrap) as sock:
        for i in range(10):
            batch = kw.record_batch([kw.Record(None, b"v%d" % i)], int(time.time() * 1000))
            sock.sendall(kw.produce_request(3, topic, 0, batch, correlation_id=i))
            assert kw.parse_produce_response(3, kw.recv_frame(sock)).error_code == 0
    for start in range(1, 6):
        answers = pipelined(
            order_broker.bootstrap,
            [delete_records_request(topic, 0, start, 10 + start), list_offsets_request(topic, 0, EARLIEST, 20 + start)],
        )
        corr, low, err = parse_delete_records(answers[0])
        assert (corr, low, err) == (10 + start, start, 0)
        corr, offset, err = parse_list_offsets(answers[1])
        assert (corr, err) == (20 + start, 0)
        assert offset == start, f"ListOffsets pipelined after DeleteRecords({start}) answered log start {offset}"


def test_create_topics_then_metadata_shows_the_topic(order_broker: BrokerProcess) -> None:
    for i in range(5):
        topic = f"order-ct-{uuid.uuid4().hex[:8]}"
        answers = pipelined(
            order_broker.bootstrap, [create_topics_request(topic, 2, 30 + i), metadata_request(topic, 40 + i)]
        )
        assert parse_topic_result(answers[0]) == (30 + i, 0)
        assert parse_metadata(answers[1]) == (40 + i, 0, 2), f"Metadata pipelined after CreateTopics({topic})"


def test_create_partitions_then_metadata_shows_the_new_count(order_broker: BrokerProcess) -> None:
    topic = f"order-cp-{uuid.uuid4().hex[:8]}"
    create_topic(order_broker.bootstrap, topic, 1)
    for count in range(2, 7):
        frames = [create_partitions_request(topic, count, 50 + count), metadata_request(topic, 60 + count)]
        answers = pipelined(order_broker.bootstrap, frames)
        assert parse_topic_result(answers[0]) == (50 + count, 0)
        assert parse_metadata(answers[1]) == (60 + count, 0, count), f"Metadata after CreatePartitions({count})"


def test_requests_after_a_refused_one_take_no_effect(order_broker: BrokerProcess) -> None:
    """The connection closes at a refused request; what was pipelined behind it does not run."""
    topic = f"order-refused-{uuid.uuid4().hex[:8]}"
    bad = kw.request(999, 0, b"", 71)  # unknown API key: refused, connection closed
    with kw.connect(order_broker.bootstrap) as sock:
        sock.sendall(kw.request(kw.API_API_VERSIONS, 0, b"", 70) + bad + create_topics_request(topic, 1, 72))
        assert kw.parse_api_versions_v0(kw.recv_frame(sock)).correlation_id == 70  # the answer before it
        assert kw.wait_closed(sock) == b""
    (answer,) = pipelined(order_broker.bootstrap, [metadata_request(topic, 73)])
    assert parse_metadata(answer)[:2] == (73, 3)  # UNKNOWN_TOPIC_OR_PARTITION: never created


def test_pipelined_produces_and_fetches_answer_in_order(order_broker: BrokerProcess) -> None:
    """Produces overlap, a fetch after them sees all of them, and every answer comes in request order."""
    topic = f"order-pf-{uuid.uuid4().hex[:8]}"
    create_topic(order_broker.bootstrap, topic, 1)
    now = int(time.time() * 1000)
    batches = [kw.record_batch([kw.Record(None, b"%d" % i)], now) for i in range(8)]
    frames = [kw.produce_request(3, topic, 0, batch, 100 + i) for i, batch in enumerate(batches)]
    frames.append(kw.fetch_request(4, topic, 0, 0, 200, max_wait_ms=0))
    answers = pipelined(order_broker.bootstrap, frames)
    results = [kw.parse_produce_response(3, a) for a in answers[:8]]
    assert [r.correlation_id for r in results] == list(range(100, 108))
    assert [r.base_offset for r in results] == list(range(8))
    fetched = kw.parse_fetch_response(4, answers[8])
    assert [b.records[0][3] for b in kw.parse_batches(fetched.records)] == [b"%d" % i for i in range(8)]


# --------------------------------------------------------------------------- memory


def _produce(bootstrap: str, topic: str, total: int) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000, "acks": "all"})
    value = os.urandom(RECORD_BYTES)
    count = total // RECORD_BYTES
    for _ in range(count):
        for _attempt in range(10_000):
            try:
                producer.produce(topic, value, partition=0)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    return count


def _round_trip(bootstrap: str) -> None:
    """A produce/consume round trip with confluent-kafka on its own topic."""
    topic = f"other-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(10):
        producer.produce(topic, b"x%d" % i, partition=0)
    assert producer.flush(60) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < 10 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        assert got == [b"x%d" % i for i in range(10)]
    finally:
        consumer.close()


def _wait_rss_below(pid: int, bound: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    now = rss(pid)
    while now > bound and time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss(pid)
    return now


@pytest.fixture
def memory_broker(broker_factory: Callable[..., BrokerProcess]) -> Iterator[tuple[BrokerProcess, str, int]]:
    b = broker_factory(MEMORY_CONFIGS)
    topic = f"big-{uuid.uuid4().hex[:8]}"
    create_topic(b.bootstrap, topic, 1)
    count = _produce(b.bootstrap, topic, DATA_BYTES)
    yield b, topic, count


@pytest.mark.parametrize("connections", [pytest.param(1, marks=pytest.mark.slow), 3])  # make test: 3 (covers 1)
def test_pipelined_big_fetches_from_a_client_that_never_reads(
    memory_broker: tuple[BrokerProcess, str, int], connections: int
) -> None:
    b, topic, count = memory_broker
    assert b.pid is not None
    base = rss(b.pid)
    bound = base + BUDGET + CONSTANT
    for rnd in range(3):
        socks: list[socket.socket] = []
        peak = rss(b.pid)
        try:
            for c in range(connections):
                sock = kw.connect(b.bootstrap)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                offsets = [((i + 7 * c) * 997) % count for i in range(PIPELINED)]
                sock.sendall(b"".join(
                    kw.fetch_request(11, topic, 0, off, 1000 + i, max_bytes=FETCH_BYTES, max_wait_ms=100)
                    for i, off in enumerate(offsets)
                ))
                socks.append(sock)
            for _ in range(12):  # the broker reads, holds what it may, then waits for the clients
                time.sleep(0.25)
                peak = max(peak, rss(b.pid))
            if rnd == 0:
                _round_trip(b.bootstrap)  # another client is served meanwhile
                peak = max(peak, rss(b.pid))
        finally:
            for sock in socks:
                sock.close()
        after = _wait_rss_below(b.pid, int(base * 1.1))
        print(
            f"round {rnd} ({connections} connection(s) x {PIPELINED} fetches of {FETCH_BYTES // MiB} MiB): "
            f"base {base / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB (bound {bound / MiB:.0f}), "
            f"after close {after / MiB:.0f} MiB"
        )
        assert peak <= bound, f"RSS peaked at {peak / MiB:.0f} MiB, over base + budget + {CONSTANT // MiB} MiB"
        assert after <= base * 1.1, f"RSS {after / MiB:.0f} MiB after close; was {base / MiB:.0f} MiB before"


# --------------------------------------------------------------------------- idle and slow connections

IDLE_MS = 1000
FRAME_MS = 500


@pytest.fixture(scope="module")
def timeout_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(
        tmp_path_factory.mktemp("idle") / "data",
        configs={"connections.max.idle.ms": str(IDLE_MS), "socket.request.timeout.ms": str(FRAME_MS)},
    )
    try:
        yield b.start()
    finally:
        b.close()


def test_idle_connection_is_closed(timeout_broker: BrokerProcess) -> None:
    with kw.connect(timeout_broker.bootstrap) as sock:
        kw.api_versions(sock)
        assert kw.wait_closed(sock, timeout=30) == b""
    assert "idle for" in timeout_broker.log_text()


def test_half_sent_frame_is_closed(timeout_broker: BrokerProcess) -> None:
    with kw.connect(timeout_broker.bootstrap) as sock:
        whole = kw.request(kw.API_API_VERSIONS, 0, b"", 9)
        sock.sendall(whole[: len(whole) // 2])
        assert kw.wait_closed(sock, timeout=30) == b""
    assert "did not arrive whole" in timeout_broker.log_text()


def test_long_poll_longer_than_idle_timeout_is_not_cut(timeout_broker: BrokerProcess) -> None:
    topic = f"poll-{uuid.uuid4().hex[:8]}"
    create_topic(timeout_broker.bootstrap, topic, 1)
    with kw.connect(timeout_broker.bootstrap) as sock:
        sock.sendall(kw.fetch_request(11, topic, 0, 0, 5, max_wait_ms=3 * IDLE_MS))  # nothing to read: waits
        answer = kw.parse_fetch_response(11, kw.recv_frame(sock))
        assert answer.error_code == 0
        assert answer.records == b""
        kw.api_versions(sock)  # still open and served


def test_client_that_takes_no_answers_is_closed_after_the_idle_timeout(timeout_broker: BrokerProcess) -> None:
    topic = f"stuck-{uuid.uuid4().hex[:8]}"
    create_topic(timeout_broker.bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": timeout_broker.bootstrap, "linger.ms": 20})
    value = os.urandom(RECORD_BYTES)
    for _ in range(4 * MiB // RECORD_BYTES):
        for _attempt in range(10_000):
            try:
                producer.produce(topic, value, partition=0)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    with kw.connect(timeout_broker.bootstrap) as sock:  # 20 answers of 4 MiB: more than the socket buffers hold
        sock.sendall(b"".join(kw.fetch_request(11, topic, 0, 0, 300 + i, max_bytes=4 * MiB) for i in range(20)))
        deadline = time.monotonic() + 30  # hang guard; the broker closes it after IDLE_MS without progress
        while "takes no responses" not in timeout_broker.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "takes no responses" in timeout_broker.log_text()
        kw.wait_closed(sock, timeout=30)  # what the kernel had already taken, then the end of the stream
