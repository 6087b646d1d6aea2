"""Bookie faults with every process real: ``tidelog run --bookies 3`` (a broker and three ``tidelog bookie``
processes on 127.0.0.1, ledgers E=3 Qw=3 Qa=2) and a confluent-kafka producer (acks=all, idempotent)
writing unique 1 KiB records as fast as the broker takes them.

* One bookie of three is killed with SIGKILL mid-stream: every acknowledged record is read back at its
  acknowledged offset, the producer saw no error at all, and throughput carries on (acks in every 5 s
  window; the windows are printed). The broker's supervisor restarts the bookie after
  ``bookie.restart.ms``. A 10 s run is in the fast suite, the 60 s one is marked slow.
* Two bookies of three are killed (supervision off): while one is left, the high watermark does not move
  and no record gets acknowledged; once the test starts one of them again, production resumes, and
  nothing acknowledged is lost.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.integration.bookie_process import BookieProcess

from .broker_process import BrokerError, BrokerProcess
from .helpers import consumer_config, create_topic

PARTS = 3
RECORD = 1024
WINDOW = 5.0
WAIT = 120.0  # hang guards only
MAX_RECORDS = 20_000_000  # bound on the producer loop

StartBroker = Callable[[dict[str, str]], BrokerProcess]


class Stream:
    """A producer thread: record ``i`` carries ``i`` in its first 8 bytes and goes to partition i % PARTS.

    Every ack is kept (partition → offsets and ids, plus the time it arrived); every failed delivery and
    every error the client reports is kept too.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.offsets = [array("q") for _ in range(PARTS)]
        self.ids = [array("q") for _ in range(PARTS)]
        self.ack_times = array("d")
        self.delivery_errors: list[str] = []
        self.client_errors: list[KafkaError] = []
        self.produced = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 300_000,  # rides out the time without an ack quorum
                "queue.buffering.max.messages": 20_000,
                "retry.backoff.ms": 50,
                "retry.backoff.max.ms": 500,
                "error_cb": self._on_error,
            }
        )
        self.thread = threading.Thread(target=self._run, name="bookie-fault-stream", daemon=True)

    def _on_error(self, err: KafkaError) -> None:
        with self.lock:
            self.client_errors.append(err)

    def _on_delivery(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        with self.lock:
            if err is not None:
                self.delivery_errors.append(f"{err} (retriable={err.retriable()}, fatal={err.fatal()})")
                return
            p = msg.partition()
            self.offsets[p].append(msg.offset())
            self.ids[p].append(struct.unpack_from(">q", msg.value())[0])
            self.ack_times.append(now)

    def _run(self) -> None:
        pad = os.urandom(RECORD - 8)
        i = 0
        while not self.stop.is_set() and i < MAX_RECORDS:
            try:
                self.producer.produce(
                    self.topic, struct.pack(">q", i) + pad, partition=i % PARTS, on_delivery=self._on_delivery
                )
            except BufferError:
                self.producer.poll(0.05)
                continue
            i += 1
            self.produced = i
            if i % 200 == 0:
                self.producer.poll(0)

    def start(self) -> Stream:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def acked(self) -> int:
        with self.lock:
            return len(self.ack_times)

    def finish(self) -> None:
        """Stop producing and wait for every outstanding record's fate."""
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "producer thread did not finish"
        left = self.producer.flush(WAIT)
        assert left == 0, f"{left} records neither acknowledged nor failed after {WAIT}s"
        del self.producer  # librdkafka's threads end with it (no reconnect noise once the broker stops)

    def abandon(self) -> None:
        """Stop producing without waiting for outstanding records (a test already failed)."""
        self.stop.set()
        self.thread.join(WAIT)
        self.producer.purge()
        self.producer.flush(1.0)
        del self.producer

    def windows(self) -> list[float]:
        """MB/s acknowledged in each WINDOW-second window since the start."""
        with self.lock:
            times = list(self.ack_times)
        if not times:
            return []
        count = int((max(times) - self.started) // WINDOW) + 1
        sizes = [0] * count
        for t in times:
            sizes[int((t - self.started) // WINDOW)] += RECORD
        return [s / WINDOW / 1e6 for s in sizes]


def _wait(what: str, cond: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def _bookies(broker: BrokerProcess) -> list[dict[str, object]]:
    state = json.loads((broker.data_dir / "bookies.json").read_text())
    return list(state["bookies"])


def _kill_bookie(broker: BrokerProcess, index: int) -> int:
    entry = next(b for b in _bookies(broker) if b["index"] == index)
    pid = int(str(entry["pid"]))
    os.kill(pid, signal.SIGKILL)
    return pid


def _high_watermarks(bootstrap: str, topic: str) -> list[int]:
    c = Consumer(consumer_config(bootstrap))
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(PARTS)]
    finally:
        c.close()


def _verify(broker: BrokerProcess, stream: Stream) -> int:
    """Read every partition from 0: contiguous offsets, every acknowledged record at its offset with its id,
    no record stored twice. Returns how many records the log holds."""
    ends = _high_watermarks(broker.bootstrap, stream.topic)
    c = Consumer(consumer_config(broker.bootstrap, **{"fetch.max.bytes": 8 << 20}))
    seen = bytearray(stream.produced + 1)
    total = 0
    try:
        for p in range(PARTS):
            stored = array("q", [-1]) * ends[p]
            c.assign([TopicPartition(stream.topic, p, 0)])
            nxt = 0
            deadline = time.monotonic() + WAIT
            while nxt < ends[p]:
                assert time.monotonic() < deadline, f"partition {p}: read only up to {nxt} of {ends[p]}"
                for m in c.consume(5000, timeout=0.5):
                    if m.error() is not None:
                        assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                        continue
                    assert m.offset() == nxt, f"partition {p}: offset {m.offset()} where {nxt} was next"
                    record_id = struct.unpack_from(">q", m.value())[0]
                    assert not seen[record_id], f"record {record_id} is stored twice"
                    seen[record_id] = 1
                    stored[nxt] = record_id
                    nxt += 1
            for offset, record_id in zip(stream.offsets[p], stream.ids[p], strict=True):
                assert offset < ends[p], f"partition {p}: acknowledged offset {offset} is past the end {ends[p]}"
                assert stored[offset] == record_id, (
                    f"partition {p} offset {offset}: acknowledged record {record_id}, read back {stored[offset]}"
                )
            total += ends[p]
    finally:
        c.close()
    return total


@pytest.fixture
def three_bookies(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartBroker]:
    """Starts ``tidelog run --bookies 3`` with the given configs; stopped (with its bookies) at teardown."""
    made: list[BrokerProcess] = []

    def start(configs: dict[str, str]) -> BrokerProcess:
        broker = BrokerProcess(tmp_path / "data", configs=configs, extra_args=["--bookies", "3"])
        made.append(broker)
        return broker.start()

    yield start
    for broker in made:
        broker.close()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n--- tidelog output ---\n{broker.log_tail(150)}")


def _one_bookie_killed(start: StartBroker, seconds: float, kill_at: float, restart_ms: int) -> None:
    broker = start({"bookie.restart.ms": str(restart_ms)})
    topic = "bookie-kill-one"
    create_topic(broker.bootstrap, topic, PARTS)
    before_pid = {b["index"]: b["pid"] for b in _bookies(broker)}
    stream = Stream(broker.bootstrap, topic).start()
    try:
        _wait("first acks", lambda: stream.acked() > 0)
        time.sleep(max(0.0, kill_at - (time.monotonic() - stream.started)))
        killed_at = time.monotonic() - stream.started
        _kill_bookie(broker, 2)
        _wait("the supervisor restarts the bookie", lambda: _bookies(broker)[1]["pid"] != before_pid[2])
        time.sleep(max(0.0, seconds - (time.monotonic() - stream.started)))
    except BaseException:
        stream.abandon()
        raise
    stream.finish()
    windows = stream.windows()
    down = (killed_at, killed_at + restart_ms / 1000)
    print(f"\nthroughput (MB/s per {WINDOW:.0f} s window; bookie-2 killed at {killed_at:.1f} s, restarted at "
          f"{down[1]:.1f} s + its start-up): " + " ".join(f"{w:.1f}" for w in windows))
    assert not stream.delivery_errors, stream.delivery_errors[:5]
    assert not [e for e in stream.client_errors if e.fatal() or not e.retriable()], stream.client_errors[:5]
    assert stream.acked() == stream.produced
    full = windows[: int(seconds // WINDOW)]  # the last window may be partial
    assert all(w > 0 for w in full), f"a {WINDOW:.0f} s window without a single ack: {windows}"
    assert _verify(broker, stream) == stream.produced


@pytest.mark.slow  # make test: the two-bookie test and the nemesis run kill bookies under load
def test_one_bookie_killed_production_carries_on_10s(three_bookies: StartBroker) -> None:
    _one_bookie_killed(three_bookies, seconds=10.0, kill_at=3.0, restart_ms=3000)


@pytest.mark.slow
def test_one_bookie_killed_during_a_60s_produce(three_bookies: StartBroker) -> None:
    _one_bookie_killed(three_bookies, seconds=60.0, kill_at=20.0, restart_ms=10_000)


def test_two_bookies_killed_nothing_acked_until_one_returns(three_bookies: StartBroker, tmp_path: Path) -> None:
    broker = three_bookies({"bookie.restart.ms": "-1"})  # the test brings a bookie back itself
    topic = "bookie-kill-two"
    create_topic(broker.bootstrap, topic, PARTS)
    entry = next(b for b in _bookies(broker) if b["index"] == 1)
    revived = BookieProcess(
        Path(str(entry["data_dir"])), bookie_id=str(entry["id"]), port=int(str(entry["port"])),
        log_path=tmp_path / "revived-bookie-1.log",
    )
    stream = Stream(broker.bootstrap, topic).start()
    try:
        try:
            _wait("acks", lambda: stream.acked() > 20_000)
            killed_at = time.monotonic() - stream.started
            _kill_bookie(broker, 1)
            _kill_bookie(broker, 3)
            time.sleep(2.0)  # confirmations already on their way when the bookies died arrive
            frozen = _high_watermarks(broker.bootstrap, topic)
            acked_then = stream.acked()
            time.sleep(8.0)
            assert _high_watermarks(broker.bootstrap, topic) == frozen, "the high watermark moved with one bookie"
            with stream.lock:
                late = [(p, o) for p in range(PARTS) for o in stream.offsets[p] if o >= frozen[p]]
            assert not late, f"acknowledged with only one bookie up: {late[:5]}"
            assert stream.produced > acked_then  # records are waiting, unacknowledged (the producer retries)
            revived_at = time.monotonic() - stream.started
            revived.start()  # bookie-1 again, same data dir and port: two bookies, an ack quorum
            _wait("production resumes", lambda: stream.acked() > acked_then + 20_000)
            time.sleep(3.0)
        except BaseException:
            stream.abandon()
            raise
        stream.finish()
        print(
            f"\nthroughput (MB/s per {WINDOW:.0f} s window; bookies 1 and 3 killed at {killed_at:.1f} s, bookie 1 "
            f"started again at {revived_at:.1f} s): " + " ".join(f"{w:.1f}" for w in stream.windows())
        )
        assert not stream.delivery_errors, stream.delivery_errors[:5]
        assert not [e for e in stream.client_errors if e.fatal()], stream.client_errors[:5]
        assert stream.acked() == stream.produced
        assert _verify(broker, stream) == stream.produced
    finally:
        broker.stop()  # before the bookie it relies on
        revived.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_bookie_processes_follow_the_broker_and_keep_their_ports(three_bookies: StartBroker) -> None:
    """The bookies die with the broker (even on kill -9), come back on the same ports with their data, stop
    with it on SIGTERM; and the data directory refuses to be opened without --bookies."""
    broker = three_bookies({})
    create_topic(broker.bootstrap, "bookie-lifecycle", 1)
    sent = [f"record-{i}".encode() for i in range(500)]
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for value in sent:
        producer.produce("bookie-lifecycle", value, partition=0)
    assert producer.flush(WAIT) == 0
    first = _bookies(broker)
    broker.kill9()
    _wait("the bookies die with their broker", lambda: not any(_alive(int(str(b["pid"]))) for b in first))
    broker.start()
    again = _bookies(broker)
    assert [b["port"] for b in again] == [b["port"] for b in first]
    assert all(a["pid"] != b["pid"] for a, b in zip(first, again, strict=True))
    c = Consumer(consumer_config(broker.bootstrap))
    try:
        c.assign([TopicPartition("bookie-lifecycle", 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while len(got) < len(sent):
            assert time.monotonic() < deadline, f"read {len(got)} of {len(sent)}"
            got += [m.value() for m in c.consume(1000, timeout=0.5) if m.error() is None]
    finally:
        c.close()
    assert got == sent
    assert broker.stop() == 0
    assert not any(_alive(int(str(b["pid"]))) for b in again), "a bookie outlived its broker's clean stop"
    plain = BrokerProcess(broker.data_dir, port=broker.port)  # the same data dir without --bookies
    with pytest.raises(BrokerError, match="exited with code 2"):  # bad input: one line, exit 2 (issue 12)
        plain.start()
    assert "was run with --bookies" in plain.log_text()
