"""A huge, negative or null length at every length position of every advertised request version, against one
running broker process: each gets a closed connection, the process never exits, and a real client
(confluent-kafka) produces and consumes correctly between rounds and at the end.

Before brokers/codec/request_check.py, kio's native reader trusted array counts: the issue's 20-byte Metadata
v12 frame made it reserve ~34 GB and the process aborted (SIGABRT), as did huge counts in Produce v9, Fetch
v12/v16, LeaveGroup v5 and OffsetCommit v9, and null arrays where the schema requires one reached handlers as
TypeError tracebacks (the conftest fails a test whose broker logged a traceback). The positions are found by
walking valid frames (tests/request_samples.py, written by kio, arrays and tagged fields filled) with kio's
schema classes; at each: 0x7fff / 0x7fffffff / ff ff ff ff 0f, -2 for int16/int32 lengths, and null where the
field is not nullable. The module also checks the other side: every valid sample is answered, nulls included.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from brokers.codec.request_check import MAX_ARRAY_ELEMENTS
from tests.request_samples import LengthPosition, length_positions, mutate, mutations, sample_requests

from . import kafka_wire as kw
from .broker_process import BrokerProcess
from .helpers import confluent_produce, confluent_read, create_topic, make_records

ISSUE_FRAME = bytes.fromhex("000000100003000c00000001ffff00ffffffff0f")
CHECK_TOPIC = "hostile-lengths-check"
CHECK_EVERY = 1_000  # hostile frames between two real-client rounds
IN_FLIGHT = 32  # hostile connections open at once (each is closed by the broker after its one frame)
CLOSE_TIMEOUT = 30.0  # hang guard per connection, not a timing assertion


@pytest.fixture(scope="module")
def hostile_broker(module_broker: BrokerProcess) -> Iterator[BrokerProcess]:
    create_topic(module_broker.bootstrap, CHECK_TOPIC, partitions=2)
    yield module_broker


class RealClient:
    """confluent-kafka producing a few records and reading every record of the topic back."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.sent: list[bytes | None] = []
        self.rounds = 0

    def round_trip(self) -> None:
        recs = make_records(20, partitions=2, seed=1000 + self.rounds)
        acked = confluent_produce(self.bootstrap, CHECK_TOPIC, recs, acks="all")
        assert len(acked) == len(recs)
        self.sent += [r.value for r in recs]
        self.rounds += 1
        got = confluent_read(self.bootstrap, CHECK_TOPIC, [0, 1], timeout=60)
        assert sorted(g.value or b"" for g in got) == sorted(v or b"" for v in self.sent), (
            f"read {len(got)} records back, {len(self.sent)} acknowledged"
        )


def _hostile_frames() -> Iterator[tuple[str, bytes]]:
    """(description, size-prefixed frame) for every length position of every sample and every hostile value."""
    for api_key, version, frame in sample_requests():
        for pos in length_positions(api_key, version, frame):
            for label, value in mutations(pos):
                yield _describe(api_key, version, pos, label), kw.frame(mutate(frame, pos, value))


def _describe(api_key: int, version: int, pos: LengthPosition, label: str) -> str:
    return f"API {api_key} v{version} {pos.path} ({pos.encoding} {pos.what}) = {label}"


def _send_all_expect_close(bootstrap: str, frames: list[tuple[str, bytes]]) -> None:
    """Send each frame on its own connection (IN_FLIGHT at a time); every connection must be closed by the
    broker without a response."""
    sel = selectors.DefaultSelector()
    pending = list(reversed(frames))
    open_socks: dict[socket.socket, tuple[str, bytearray, float]] = {}
    try:
        while pending or open_socks:
            while pending and len(open_socks) < IN_FLIGHT:
                what, data = pending.pop()
                sock = kw.connect(bootstrap)
                sock.sendall(data)
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ)
                open_socks[sock] = (what, bytearray(), time.monotonic() + CLOSE_TIMEOUT)
            for key, _ in sel.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                what, got, _deadline = open_socks[sock]
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    chunk = b""
                if chunk:
                    got += chunk
                    continue
                assert not got, f"{what}: answered {bytes(got[:64]).hex()} instead of closing the connection"
                sel.unregister(sock)
                sock.close()
                del open_socks[sock]
            now = time.monotonic()
            for what, _got, deadline in open_socks.values():
                assert now < deadline, f"{what}: connection still open after {CLOSE_TIMEOUT}s"
    finally:
        for sock in open_socks:
            sock.close()
        sel.close()


def test_the_20_byte_frame_of_the_issue_closes_only_its_connection(hostile_broker: BrokerProcess) -> None:
    bystander = kw.connect(hostile_broker.bootstrap)
    sock = kw.connect(hostile_broker.bootstrap)
    sock.sendall(ISSUE_FRAME)
    assert kw.wait_closed(sock) == b""
    assert hostile_broker.running
    assert kw.api_versions(bystander)[3][1] >= 12  # another client's open connection still answers
    assert "invalid API 3 v12 request: topics: array of 4294967294 elements" in hostile_broker.log_text()


def test_a_hostile_length_at_every_position_of_every_version_closes_the_connection(
    hostile_broker: BrokerProcess,
) -> None:
    client = RealClient(hostile_broker.bootstrap)
    client.round_trip()
    frames = list(_hostile_frames())
    kinds = {(api, version) for api, version, _ in sample_requests()}
    positions = sum(len(length_positions(api, version, frame)) for api, version, frame in sample_requests())
    schema_positions = {
        (api, version, p.schema_path)
        for api, version, frame in sample_requests()
        for p in length_positions(api, version, frame)
    }
    for start in range(0, len(frames), CHECK_EVERY):
        _send_all_expect_close(hostile_broker.bootstrap, frames[start : start + CHECK_EVERY])
        assert hostile_broker.running, f"the broker exited after frames {start}..{start + CHECK_EVERY}"
        client.round_trip()
    print(
        f"{len(frames)} hostile lengths tried at {positions} length positions ({len(schema_positions)} distinct "
        f"schema fields) of {len(kinds)} API versions; {client.rounds} real-client rounds"
    )
    assert len(frames) > 4_000


def test_produce_versions_advertised_below_the_handled_range_are_closed(hostile_broker: BrokerProcess) -> None:
    """Produce v0-v2 are advertised for librdkafka's sake but have no kio schema: closed before decoding."""
    v3 = next(frame for api, version, frame in sample_requests() if (api, version) == (0, 3))
    frames = []
    for pos in length_positions(0, 3, v3):
        for label, value in mutations(pos):
            hostile = mutate(v3, pos, value)
            frames += [
                (f"Produce v{v} {pos.path} = {label}", kw.frame(struct.pack(">hh", 0, v) + hostile[4:]))
                for v in range(3)
            ]
    _send_all_expect_close(hostile_broker.bootstrap, frames)
    assert hostile_broker.running
    print(f"{len(frames)} hostile Produce v0-v2 frames closed")


def test_every_valid_sample_is_answered_nulls_included(hostile_broker: BrokerProcess) -> None:
    """The other side of the check: every valid request (with every nullable field null in one variant) is
    answered, on one connection, and reaches its handler without a traceback (checked at teardown)."""
    samples = sample_requests()
    sock = kw.connect(hostile_broker.bootstrap)
    try:
        for i, (api_key, version, frame) in enumerate(samples):
            correlation_id = 1_000_000 + i
            sock.sendall(kw.frame(frame[:4] + struct.pack(">i", correlation_id) + frame[8:]))
            try:
                response = kw.recv_frame(sock)
            except kw.Closed:
                pytest.fail(f"API {api_key} v{version} sample #{i} closed the connection")
            assert struct.unpack_from(">i", response)[0] == correlation_id
    finally:
        sock.close()
    assert hostile_broker.running
    print(f"{len(samples)} valid samples answered")


def test_a_request_with_more_array_elements_than_the_bound_is_closed(hostile_broker: BrokerProcess) -> None:
    """Every element fits the frame, but MAX_ARRAY_ELEMENTS + 1 group names would be too many Python objects."""
    names = MAX_ARRAY_ELEMENTS + 1
    compact_count = bytearray()
    n = names + 1
    while n >= 0x80:
        compact_count.append(n & 0x7F | 0x80)
        n >>= 7
    compact_count.append(n)
    header = struct.pack(">hhih", 42, 2, 1, 1) + b"x" + b"\x00"  # DeleteGroups v2, header v2
    frame = header + bytes(compact_count) + b"\x03ab" * names + b"\x00"
    _send_all_expect_close(hostile_broker.bootstrap, [("DeleteGroups v2, too many names", kw.frame(frame))])
    assert hostile_broker.running
    assert f"more than {MAX_ARRAY_ELEMENTS} array elements in one request" in hostile_broker.log_text()
