"""Regression tests for what the fuzz suite (tests/e2e/test_fuzz.py) found: one hand-built frame each.

Each frame passes request decoding and used to reach a handler (or the connection machinery) that then
raised: the broker logged a traceback and closed the connection with "internal error". The claim checked
here is the fuzz suite's: an answer (or a closed connection where Kafka closes it), the broker still serving,
and no traceback in its log.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid

from .broker_process import BrokerProcess
from .helpers import create_topic
from .kafka_wire import fetch_request, uvarint

# The tests read the log themselves (and say which frame provoked what they find).
BROKER_TRACEBACKS_OK = True


def _request(api_key: int, version: int, body: bytes, correlation_id: int = 1, flexible: bool = True) -> bytes:
    """A size-prefixed request: header v2 (v1 when not flexible) with client id "fuzz", then ``body``."""
    header = struct.pack(">hhih", api_key, version, correlation_id, 4) + b"fuzz" + (b"\x00" if flexible else b"")
    return struct.pack(">i", len(header) + len(body)) + header + body


def _exchange(broker: BrokerProcess, frames: list[bytes], timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send frames on one connection; return what came back until the broker closed it or went quiet."""
    got = bytearray()
    with socket.create_connection(("127.0.0.1", broker.port), timeout=timeout) as s:
        s.sendall(b"".join(frames))
        s.settimeout(1.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 16)
            except TimeoutError:
                return bytes(got), False
            if not chunk:
                return bytes(got), True
            got += chunk
    return bytes(got), False


def _assert_serving_without_traceback(broker: BrokerProcess, what: str) -> None:
    """ApiVersions v0 is answered on a new connection; then the broker is stopped and its log must hold no
    traceback. Stopped first, because asyncio logs the exception of a task nobody awaited only when the task
    is collected, which for tasks in reference cycles may be long after (at the latest, at exit)."""
    answer, _ = _exchange(broker, [_request(18, 0, b"", 9, flexible=False)])
    assert len(answer) >= 8 and struct.unpack_from(">i", answer, 4)[0] == 9, f"after {what}: no ApiVersions answer"
    broker.stop()
    log = broker.log_text()
    assert "Traceback" not in log, f"after {what} the broker logged:\n{log[log.index('Traceback') - 300 :][:3000]}"


def test_metadata_v10_topic_by_id_only(broker: BrokerProcess) -> None:
    """Metadata v10/v11 with a topic given by id and a null name (names are not nullable in those versions'
    answers): kio raised TypeError encoding the answer ("API 3 v10 ... failed")."""
    for version in (10, 11):
        topic = uuid.uuid4().bytes + b"\x00" + b"\x00"  # topic_id, name null, no tagged fields
        body = uvarint(2) + topic + b"\x01" + (b"\x00" if version == 10 else b"") + b"\x00" + b"\x00"
        _exchange(broker, [_request(3, version, body)])
    _assert_serving_without_traceback(broker, "Metadata v10/v11 naming a topic by id only")


def test_bad_frame_then_pipelined_frames(broker: BrokerProcess) -> None:
    """A malformed frame followed by more frames on the same connection, then the client goes away: the
    requests behind the one that closed the connection raised CloseConnection into tasks nobody awaited,
    and asyncio logged "Task exception was never retrieved" with a traceback for each."""
    bad = _request(3, 12, b"\xff\xff\xff\xff\x0f")  # Metadata v12, topic count 2^32-1 in a 5-byte body
    unknown = struct.pack(">i", 10) + struct.pack(">hhih", 1000, 0, 2, -1)
    good = _request(18, 0, b"", 3, flexible=False)
    for _ in range(5):
        _exchange(broker, [bad, unknown, bad, unknown], timeout=2.0)
    for n in range(20):  # the client resets the connection before reading its answers
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"".join([good] * (n % 4) + [bad, unknown, good, bad]))
    _assert_serving_without_traceback(broker, "a refused frame with more frames pipelined behind it")


def test_bad_frames_behind_a_waiting_fetch_at_shutdown(broker: BrokerProcess) -> None:
    """Refused frames pipelined behind a Fetch that waits for data, then the broker is stopped: the refused
    requests' tasks ended with CloseConnection that nothing awaited, and asyncio logged "Task exception was
    never retrieved" with a traceback for each (seen at the end of fuzz runs)."""
    topic = f"fuzzreg-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, 1)
    bad = _request(3, 12, b"\xff\xff\xff\xff\x0f")
    unknown = struct.pack(">i", 10) + struct.pack(">hhih", 1000, 0, 2, -1)
    socks = []
    for n in range(4):
        s = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
        s.sendall(fetch_request(4, topic, 0, 0, 100 + n, max_wait_ms=30_000) + bad + unknown + bad)
        socks.append(s)
    time.sleep(1.0)
    try:
        broker.stop()
    finally:
        for s in socks:
            s.close()
    log = broker.log_text()
    assert "Traceback" not in log, f"the broker logged:\n{log[log.index('Traceback') - 300 :][:3000]}"


def test_refused_produces_pipelined(broker: BrokerProcess) -> None:
    """Produce requests overlap on a connection, so several refused ones pipelined all end with CloseConnection
    at once; the writer awaits only the first before closing, and the others' exceptions were never retrieved
    (asyncio logged "Task exception was never retrieved" with a traceback for each)."""
    bad_produce = _request(0, 9, b"\x00\xff\xff\xff\xff\x0f")  # Produce v9: transactional_id null, then junk
    unsupported = struct.pack(">i", 10) + struct.pack(">hhih", 0, 99, 2, -1)  # Produce v99
    for _ in range(10):
        _exchange(broker, [bad_produce, unsupported, bad_produce, unsupported], timeout=2.0)
    _assert_serving_without_traceback(broker, "refused Produce requests pipelined on one connection")

