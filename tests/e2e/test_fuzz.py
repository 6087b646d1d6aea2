"""Fuzzing one running broker process with mutated request frames (tests/fuzz_frames.py), issue 9.

Frames go out over several concurrent connections; whatever comes back is read with short timeouts (a
connection the broker closes is reopened). Every ``CHECK_EVERY`` frames the broker process must be alive,
its RSS (VmRSS of the ``tidelog run`` process) under ``RSS_BOUND``, and a real client (confluent-kafka,
acks=all) must produce records and read them back. At the end the broker log must hold no traceback other
than the known ones listed in ``KNOWN_TRACEBACKS``.

RSS bound (measured, 2 cores shared with other work): a fresh broker is 52 MB RSS; 20,000 fuzz frames take it
to 76 MB and 100,000 to 78 MB. 600 MB leaves room for allocator slack and caches, and still catches growth in
proportion to input: before partition limits (commit 27d2314) the same fuzzer took the broker past 600 MB
within 28,000 frames. 260-410 frames/s here (most frames close their connection; neither process is CPU-bound:
requests wait behind slower ones on their connection): ~1 minute for the fast test, ~40-65 for the slow one.

On a failure the seed, the frames last sent (hex) and, after a replay of each on a fresh broker, the frame
that kills or hangs it on its own are printed; ``python -m tests.fuzz_frames SEED INDEX`` rebuilds a frame.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import select
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kio.index import load_response_schema
from kio.serial import entity_reader

from tests.fuzz_frames import FuzzFrame, check_valid, encodable_versions, fuzz_frame, make_sample

from .broker_process import BrokerProcess
from .helpers import consumer_config, create_topic

# The test judges the broker log itself (see KNOWN_TRACEBACKS), so the fixture's blanket check is off.
BROKER_TRACEBACKS_OK = True

SEED = int(os.environ.get("TIDELOG_FUZZ_SEED", "20260901"))
FAST_FRAMES = int(os.environ.get("TIDELOG_FUZZ_FRAMES", "10000"))  # the slow suite sends 1,000,000
SLOW_FRAMES = 1_000_000
CHECK_EVERY = 2_000
# Connections overlap requests waiting on fsync (produce, offset commit, topics): 16 gave ~60% of the rate of 48.
CONNECTIONS = int(os.environ.get("TIDELOG_FUZZ_CONNECTIONS", "48"))
RSS_BOUND = 600 * 1024 * 1024
RESPONSE_WAIT = 0.2  # how long a connection waits for an answer before sending its next frame
CLIENT_TIMEOUT = 30.0  # hang guard of the real-client check
CHECK_RECORDS = 5
# Handler exceptions the fuzzer still provokes, as (API key, exception type) found in the log; each is a
# known bug listed in the report of issue 9. Anything else in the log fails the test.
# (api key, exception) pairs tolerated in the broker log. Empty: the last one, (2, NoSuchEntry) from ListOffsets
# by timestamp on a ledger the bookie had dropped, is fixed (brokers/log/tiered.py re-routes the read, then
# KAFKA_STORAGE_ERROR; tests/unit/test_tiered_read_reroute.py). Add a pair here only for a bug being worked on.
KNOWN_TRACEBACKS: frozenset[tuple[int, str]] = frozenset()


class BrokerDown(Exception):
    """The broker process exited or stopped accepting connections."""


@cache
def _response_reader(api_key: int, version: int) -> tuple[bool, Any]:
    """Whether a response has header v1, and its kio body reader (None when kio has no schema)."""
    try:
        schema = load_response_schema(api_key, version)
    except Exception:
        return False, None
    flexible = api_key != 18 and bool(schema.__header_schema__.__flexible__)
    return flexible, entity_reader(schema)


def _has_error(value: Any, depth: int = 0) -> bool:
    """Whether any error_code in a decoded response (walked a few levels deep) is non-zero."""
    if depth > 4:
        return False
    code = getattr(value, "error_code", None)
    if code is not None and int(getattr(code, "value", code)) != 0:
        return True
    for name in getattr(value, "__dataclass_fields__", ()):
        item = getattr(value, name)
        if isinstance(item, tuple):
            if any(_has_error(x, depth + 1) for x in item[:8]):
                return True
        elif hasattr(item, "__dataclass_fields__") and _has_error(item, depth + 1):
            return True
    return False


@dataclass
class Stats:
    frames: int = 0
    responses: int = 0
    error_responses: int = 0
    undecodable_responses: int = 0
    closed_by_broker: int = 0
    closed_by_us: int = 0
    send_failures: int = 0
    silent: int = 0
    max_rss: int = 0
    checks: int = 0
    check_seconds: float = 0.0
    rss_samples: list[int] = field(default_factory=list)


class Conn:
    """One fuzzing connection: the frame awaiting an answer, and bytes read but not yet a whole response."""

    def __init__(self, port: int) -> None:
        try:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        except OSError as e:
            raise BrokerDown(f"connect failed: {e!r}") from None
        self.sock.settimeout(5.0)
        self.buf = bytearray()
        self.sent: dict[int, tuple[int, int]] = {}  # correlation id -> (api key, version) as sent
        self.awaiting: int | None = None
        self.deadline = 0.0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Fuzzer:
    """Sends frames ``fuzz_frame(seed, i)`` to one broker, checking it between chunks."""

    def __init__(self, broker: BrokerProcess, seed: int, check_topic: str) -> None:
        self.broker = broker
        self.seed = seed
        self.topic = check_topic
        self.stats = Stats()
        self.recent: collections.deque[FuzzFrame] = collections.deque(maxlen=64)
        self.conns = [Conn(broker.port) for _ in range(CONNECTIONS)]
        self.producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
        self.consumer = Consumer(consumer_config(broker.bootstrap))
        self.consumer.assign([TopicPartition(check_topic, 0, 0)])
        self.checked = 0  # records of the check topic read back so far

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.consumer.close()

    # ---------------------------------------------------------------- sending

    def _reopen(self, i: int) -> None:
        self.conns[i].close()
        self.conns[i] = Conn(self.broker.port)

    def _send(self, i: int, frame: FuzzFrame) -> None:
        conn = self.conns[i]
        self.recent.append(frame)
        self.stats.frames += 1
        try:
            conn.sock.sendall(frame.wire)
        except OSError:
            self.stats.send_failures += 1  # the broker closed it (after an earlier bad frame) or stopped reading
            self._reopen(i)
            return
        if frame.last:
            self.stats.closed_by_us += 1
            self._reopen(i)
            return
        if len(frame.wire) >= 12:
            api_key, version, corr = struct.unpack_from(">hhi", frame.wire, 4)
            conn.sent[corr] = (api_key, version)
            if len(conn.sent) > 256:  # answers that never came (the broker may drop them with the connection)
                conn.sent.pop(next(iter(conn.sent)))
            conn.awaiting = corr
            conn.deadline = time.monotonic() + RESPONSE_WAIT

    def _read(self, i: int) -> None:
        conn = self.conns[i]
        try:
            data = conn.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.stats.closed_by_broker += 1
            self._reopen(i)
            return
        conn.buf += data
        while len(conn.buf) >= 8:
            (size,) = struct.unpack_from(">i", conn.buf, 0)
            if len(conn.buf) < 4 + size:
                break
            payload = bytes(conn.buf[4 : 4 + size])
            del conn.buf[: 4 + size]
            self._response(conn, payload)

    def _response(self, conn: Conn, payload: bytes) -> None:
        self.stats.responses += 1
        (corr,) = struct.unpack_from(">i", payload, 0)
        if corr == conn.awaiting:
            conn.awaiting = None
        sent = conn.sent.pop(corr, None)
        if sent is None:
            self.stats.undecodable_responses += 1
            return
        flexible, reader = _response_reader(*sent)
        if reader is None:
            self.stats.undecodable_responses += 1
            return
        try:
            body, _ = reader(payload, 5 if flexible else 4)
        except Exception:
            # ApiVersions answers an unsupported version with a v0 body; anything else is noted, not judged
            self.stats.undecodable_responses += 1
            return
        if _has_error(body):
            self.stats.error_responses += 1

    def run_chunk(self, start: int, end: int) -> None:
        """Send frames start..end-1, frame i on connection i % CONNECTIONS, one awaited answer at a time."""
        queues = [collections.deque(range(start + i, end, CONNECTIONS)) for i in range(CONNECTIONS)]
        while True:
            now = time.monotonic()
            busy = False
            for i, conn in enumerate(self.conns):
                if conn.awaiting is not None and now >= conn.deadline:
                    self.stats.silent += 1
                    conn.awaiting = None
                if conn.awaiting is None and queues[i]:
                    self._send(i, fuzz_frame(self.seed, queues[i].popleft()))
                busy = busy or conn.awaiting is not None or bool(queues[i])
            if not busy:
                return
            waiting = [c.sock for c in self.conns if c.awaiting is not None]
            timeout = max(0.0, min((c.deadline for c in self.conns if c.awaiting is not None), default=now) - now)
            readable, _, _ = select.select([c.sock for c in self.conns], [], [], timeout if waiting else 0)
            for sock in readable:
                i = next(k for k, c in enumerate(self.conns) if c.sock is sock)
                self._read(i)

    # ---------------------------------------------------------------- checks

    def rss(self) -> int:
        pid = self.broker.pid
        assert pid is not None
        text = Path(f"/proc/{pid}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        assert m is not None
        return int(m.group(1)) * 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the broker process so far."""
        stat = Path(f"/proc/{self.broker.pid}/stat").read_text()
        utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def check(self) -> None:
        """The process is alive, under its RSS bound, and serves a real producer and consumer."""
        if not self.broker.running:
            raise BrokerDown(f"the broker process exited (code {self.broker.proc and self.broker.proc.poll()})")
        rss = self.rss()
        self.stats.rss_samples.append(rss)
        self.stats.max_rss = max(self.stats.max_rss, rss)
        assert rss < RSS_BOUND, f"broker RSS {rss >> 20} MB >= bound {RSS_BOUND >> 20} MB"
        values = [f"check-{self.stats.checks}-{n}-{uuid.uuid4().hex}".encode() for n in range(CHECK_RECORDS)]
        errors: list[str] = []
        for v in values:
            self.producer.produce(
                self.topic, v, partition=0, on_delivery=lambda err, _m: errors.append(str(err)) if err else None
            )
        left = self.producer.flush(CLIENT_TIMEOUT)
        if left or errors:
            raise BrokerDown(f"real producer: {left} records unsent after {CLIENT_TIMEOUT}s, errors {errors}")
        got: list[bytes | None] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while len(got) < CHECK_RECORDS and time.monotonic() < deadline:
            for m in self.consumer.consume(CHECK_RECORDS, timeout=0.5):
                if m.error() is None:
                    assert m.offset() == self.checked, f"offset {m.offset()} where {self.checked} was expected"
                    self.checked += 1
                    got.append(m.value())
        if len(got) < CHECK_RECORDS:
            raise BrokerDown(f"real consumer read {len(got)} of {CHECK_RECORDS} records in {CLIENT_TIMEOUT}s")
        assert got == list(values), f"real consumer read {got}, produced {values}"
        self.stats.checks += 1

    def run(self, frames: int) -> None:
        self.check()
        for start in range(0, frames, CHECK_EVERY):
            self.run_chunk(start, min(frames, start + CHECK_EVERY))
            t = time.monotonic()
            self.check()
            self.stats.check_seconds += time.monotonic() - t


# -------------------------------------------------------------------- triage


def replay_alone(frames: list[FuzzFrame], data_dir: Path) -> list[str]:
    """Each frame alone on a fresh connection to a fresh broker: the ones that kill or hang it."""
    found: list[str] = []
    b = BrokerProcess(data_dir)
    b.start()
    try:
        for frame in frames:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", b.port), timeout=2) as s:
                s.sendall(frame.wire)
                s.settimeout(1.0)
                with contextlib.suppress(OSError):
                    s.recv(1 << 16)
            if not _answers_api_versions(b):
                found.append(f"{'killed' if not b.running else 'hung'} the broker: {frame.describe()}")
                b.close()
                b.start()
    finally:
        b.close()
    return found


def _answers_api_versions(b: BrokerProcess) -> bool:
    if not b.running:
        return False
    try:
        with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
            s.settimeout(10)
            body = struct.pack(">hhih", 18, 0, 7, -1)
            s.sendall(struct.pack(">i", len(body)) + body)
            return len(s.recv(8)) > 0
    except OSError:
        return False


def handler_tracebacks(log: str) -> tuple[collections.Counter[tuple[int, str]], dict[tuple[int, str], str]]:
    """(API key, exception type) of each "API %d v%d from %s failed" traceback in a broker log, and
    (-1, first line) of any other traceback; with the text of the first of each kind."""
    found: collections.Counter[tuple[int, str]] = collections.Counter()
    first: dict[tuple[int, str], str] = {}
    lines = log.splitlines()
    for n, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        api = -1
        m = re.search(r"API (\d+) v\d+ from \S+ failed", lines[n - 1] if n else "")
        if m:
            api = int(m.group(1))
        exc = next((x for x in lines[n + 1 :] if x and not x.startswith((" ", "Traceback"))), "?")
        key = (api, exc.split(":")[0] if api >= 0 else exc[:200])
        found[key] += 1
        first.setdefault(key, "\n".join(lines[max(0, n - 2) : n + 40]))
    return found, first


def fuzz_and_report(broker: BrokerProcess, frames: int, tmp_path: Path) -> None:
    topic = f"fuzzcheck-{uuid.uuid4().hex[:12]}"
    create_topic(broker.bootstrap, topic, 1)
    fuzzer = Fuzzer(broker, SEED, topic)
    started = time.monotonic()
    cpu_start, own_start = fuzzer.cpu_seconds(), time.process_time()
    failure: BaseException | None = None
    broker_cpu = 0.0
    try:
        fuzzer.run(frames)
        broker_cpu = fuzzer.cpu_seconds() - cpu_start
    except (BrokerDown, AssertionError) as e:
        failure = e
    finally:
        fuzzer.close()
    elapsed = time.monotonic() - started
    own_cpu = time.process_time() - own_start
    s = fuzzer.stats
    print(
        f"\nfuzz seed={SEED}: {s.frames} frames in {elapsed:.1f} s ({s.frames / elapsed:.0f} frames/s) over "
        f"{CONNECTIONS} connections; {s.closed_by_broker} connections closed by the broker, {s.closed_by_us} by us "
        f"(lying size), {s.send_failures} sends failed; {s.responses} responses ({s.error_responses} with an "
        f"error code, {s.undecodable_responses} not decoded), {s.silent} frames unanswered within "
        f"{RESPONSE_WAIT}s; {s.checks} real-client checks ({s.check_seconds:.1f} s); "
        f"RSS max {s.max_rss / 2**20:.0f} MB "
        f"(first {s.rss_samples[0] / 2**20 if s.rss_samples else 0:.0f} MB, bound {RSS_BOUND >> 20} MB); "
        f"CPU: broker {broker_cpu:.1f} s, test process {own_cpu:.1f} s; load {os.getloadavg()[0]:.2f}"
    )
    if failure is not None:
        last = list(fuzzer.recent)[-CONNECTIONS * 3 :]
        shown = "\n".join(f.describe() for f in last)
        culprits = replay_alone(last, tmp_path / "replay")
        pytest.fail(
            f"fuzz seed {SEED} failed after {s.frames} frames: {failure}\n--- last frames sent ---\n{shown}\n"
            f"--- replayed alone on a fresh broker ---\n{chr(10).join(culprits) or 'none kills it alone'}\n"
            f"--- broker log ---\n{broker.log_tail(80)}"
        )
    # Stopped before reading the log: asyncio logs an exception nobody awaited only when its task is
    # collected, which for tasks in reference cycles may be as late as the broker's exit.
    broker.stop()
    tracebacks, texts = handler_tracebacks(broker.log_text())
    print(f"broker log tracebacks: {dict(tracebacks) or 'none'}")
    unknown = {k: n for k, n in tracebacks.items() if k not in KNOWN_TRACEBACKS}
    shown = "\n\n".join(texts[k] for k in unknown)
    assert not unknown, f"tracebacks in the broker log ({broker.log_path}): {unknown}\n{shown}"


def test_fuzzer_bases_are_valid_and_frames_reproducible() -> None:
    """The fuzzer's unmutated requests decode with kio to their last byte, for every advertised version kio
    knows (so mutations start from valid requests), and a frame depends on nothing but (seed, index)."""
    for key, version in encodable_versions():
        for n in range(5):
            check_valid(make_sample(key, version, random.Random(f"{key}:{version}:{n}")))
    assert [fuzz_frame(7, i).wire for i in range(200)] == [fuzz_frame(7, i).wire for i in range(200)]


def test_fuzz_frames_fast(broker: BrokerProcess, tmp_path: Path) -> None:
    """>= 10,000 mutated frames (TIDELOG_FUZZ_FRAMES): the broker lives, stays under its RSS bound, serves a client."""
    fuzz_and_report(broker, FAST_FRAMES, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(5400)  # hang guard: 40-65 minutes at 260-410 frames/s (the suite's default is 600 s)
def test_fuzz_frames_million(broker: BrokerProcess, tmp_path: Path) -> None:
    """1,000,000 mutated frames (bounded), the same checks every 2,000."""
    fuzz_and_report(broker, SLOW_FRAMES, tmp_path)
