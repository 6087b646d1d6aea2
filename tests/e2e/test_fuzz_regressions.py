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

from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from brokers.handlers.base import response_module

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
    """Metadata v10/v11 naming a topic by id (a null name, or a topic id beside a name): kio raised TypeError
    encoding the answer ("API 3 v10 ... failed"). Kafka refuses such a request ("Topic name can not be null
    for version N" / "Topic IDs are not supported in requests for version N", InvalidRequestException) with
    its error response: every topic asked for with INVALID_REQUEST, a null name answered as "", no brokers."""
    create_topic(broker.bootstrap, "named", 1)
    known = uuid.uuid4()
    for version in (10, 11):
        mod = response_module(3, version)
        by_id = known.bytes + b"\x00" + b"\x00"  # topic_id, name null, no tagged fields
        named_with_id = uuid.uuid4().bytes + uvarint(len(b"named") + 1) + b"named" + b"\x00"
        for topics, names in ((by_id, [""]), (named_with_id, ["named"]), (by_id + named_with_id, ["", "named"])):
            body = uvarint(len(names) + 1) + topics + b"\x01" + (b"\x00" if version == 10 else b"") + b"\x00\x00"
            answer, closed = _exchange(broker, [_request(3, version, body, correlation_id=5)])
            assert not closed and len(answer) > 9, f"v{version}: no answer ({answer!r})"
            size, correlation_id = struct.unpack_from(">ii", answer)
            assert size == len(answer) - 4 and correlation_id == 5
            response, used = entity_reader(mod.MetadataResponse)(answer, 9)  # size, correlation id, tags
            assert 9 + used == len(answer)  # the reader returns what it consumed
            assert [t.name for t in response.topics] == names
            assert {t.error_code for t in response.topics} == {ErrorCode.invalid_request}
            assert response.topics[0].topic_id is not None
            assert response.brokers == () and response.controller_id == -1
    for version in (10, 11, 12):  # a name and no topic id is answered as always; v12 may name by id
        topic = uuid.UUID(int=0).bytes + uvarint(len(b"named") + 1) + b"named" + b"\x00"
        body = uvarint(2) + topic + b"\x01" + (b"\x00" if version == 10 else b"") + b"\x00\x00"
        answer, _ = _exchange(broker, [_request(3, version, body)])
        response, _ = entity_reader(response_module(3, version).MetadataResponse)(answer, 9)
        assert [(t.name, t.error_code) for t in response.topics] == [("named", ErrorCode.none)]
    _assert_serving_without_traceback(broker, "Metadata v10/v11 naming a topic by id")


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

