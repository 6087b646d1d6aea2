"""Every acknowledged record survives ``kill -9`` of the broker, at the offset it was acked at.

A confluent-kafka producer (acks=all) writes continuously from a thread, recording each delivery
report's (partition, offset, value). The broker is SIGKILLed mid-stream — twice — and restarted on the
same data directory and port; the producer reconnects by itself and carries on. Afterwards each
partition is read from offset 0: offsets are contiguous (no gap), every acked record is at its acked
offset with its value, no offset was acked twice, and new writes continue right after the end.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import Producer

from .broker_process import BrokerProcess
from .helpers import confluent_read, create_topic, high_watermarks

PARTS = 3
MAX_RECORDS = 1_000_000  # bound on the producer loop
WAIT = 120.0  # hang guards


class AckedWriter:
    """A producer thread writing unique values round-robin over the partitions until stopped."""

    def __init__(self, bootstrap: str, topic: str, idempotent: bool) -> None:
        self.topic = topic
        self.acked: dict[tuple[int, int], bytes] = {}
        self.double_acks: list[tuple[tuple[int, int], bytes, bytes]] = []
        self.errors: list[str] = []
        self.produced = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": idempotent,
                "linger.ms": 2,
                "message.timeout.ms": 180_000,  # rides out the broker's restarts
                "queue.buffering.max.messages": 20_000,  # keeps the writer close to the acks (BufferError)
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 500,
                "retry.backoff.ms": 50,
                "retry.backoff.max.ms": 500,
            }
        )
        self.thread = threading.Thread(target=self._run, name="acked-writer", daemon=True)

    def _on_delivery(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            if err is not None:
                self.errors.append(f"{msg.value()[:20]!r}: {err}")
                return
            k = (msg.partition(), msg.offset())
            if k in self.acked:
                self.double_acks.append((k, self.acked[k], msg.value()))
            self.acked[k] = msg.value()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set() and i < MAX_RECORDS:
            value = f"v{i:08d}-".encode() + b"x" * 90
            try:
                self.producer.produce(self.topic, value, partition=i % PARTS, on_delivery=self._on_delivery)
            except BufferError:
                self.producer.poll(0.05)
                continue
            i += 1
            self.produced = i
            if i % 100 == 0:
                self.producer.poll(0)
        self.producer.flush(WAIT)

    def n_acked(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_acked(self, n: int, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while self.n_acked() < n:
            assert self.thread.is_alive() or self.n_acked() >= n, (
                f"writer stopped early: produced {self.produced}, acked {self.n_acked()}, errors {self.errors[:3]}"
            )
            assert time.monotonic() < deadline, f"only {self.n_acked()} of {n} records acked after {timeout}s"
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(WAIT + 30)
        assert not self.thread.is_alive(), "producer thread did not finish"
        left = self.producer.flush(WAIT)
        assert left == 0, f"{left} records never resolved (neither acked nor failed)"


def verify_log(broker: BrokerProcess, topic: str, w: AckedWriter, exactly_once: bool) -> dict[int, int]:
    got = confluent_read(broker.bootstrap, topic, range(PARTS), start=0)
    by_p: dict[int, list] = defaultdict(list)
    for g in got:
        by_p[g.partition].append(g)
    ends = {}
    for p in range(PARTS):
        offs = [g.offset for g in by_p[p]]
        assert offs == list(range(len(offs))), f"partition {p}: offsets have a gap or repeat"
        ends[p] = len(offs)
    stored = {(g.partition, g.offset): g.value for g in got}
    missing = [(k, v[:12]) for k, v in w.acked.items() if stored.get(k) != v]
    assert not missing, f"{len(missing)} acked records lost or changed, e.g. {missing[:5]} (acked {len(w.acked)})"
    assert not w.double_acks, f"offsets acknowledged twice: {w.double_acks[:5]}"
    if exactly_once:
        dups = [v[:12] for v, c in Counter(g.value for g in got).items() if c > 1]
        assert not dups, f"idempotent producer: {len(dups)} values stored more than once, e.g. {dups[:5]}"
    # Watermarks agree with what was read.
    hw = high_watermarks(broker.bootstrap, topic, range(PARTS))
    assert {p: hw[p][1] for p in range(PARTS)} == ends
    assert all(hw[p][0] == 0 for p in range(PARTS))
    return ends


def produce_after(broker: BrokerProcess, topic: str, ends: dict[int, int], n: int = 300) -> None:
    """New writes land right after the old end: no gap and no reused offset."""
    acked: list[tuple[int, int, bytes]] = []
    errors: list[str] = []

    def cb(err, msg) -> None:  # type: ignore[no-untyped-def]
        if err:
            errors.append(str(err))
        else:
            acked.append((msg.partition(), msg.offset(), msg.value()))

    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(n * PARTS):
        p.produce(topic, f"after-{i}".encode(), partition=i % PARTS, on_delivery=cb)
    assert p.flush(WAIT) == 0
    assert not errors, errors[:5]
    for part in range(PARTS):
        offs = sorted(o for pp, o, _ in acked if pp == part)
        assert offs == list(range(ends[part], ends[part] + n)), (
            f"partition {part}: new records at {offs[:3]}..{offs[-3:]}, expected from {ends[part]}"
        )
    stored = confluent_read(broker.bootstrap, topic, range(PARTS), start=0)
    stored_map = {(g.partition, g.offset): g.value for g in stored}
    for pp, o, v in acked:
        assert stored_map.get((pp, o)) == v


def run_kill_cycles(broker: BrokerProcess, topic: str, idempotent: bool, cycles: int, per_cycle: int) -> None:
    create_topic(broker.bootstrap, topic, PARTS)
    w = AckedWriter(broker.bootstrap, topic, idempotent)
    w.thread.start()
    try:
        target = per_cycle
        for _cycle in range(cycles):
            w.wait_acked(target)
            broker.kill9()  # mid-stream: the producer has many records in flight
            at_kill = w.n_acked()
            time.sleep(0.3)
            broker.start()  # same data dir, same port
            # The producer reconnects on its own and its backlog drains into the restarted broker.
            target = at_kill + per_cycle
        w.wait_acked(target)
    finally:
        w.finish()

    assert not w.errors, f"{len(w.errors)} deliveries failed, e.g. {w.errors[:5]}"
    assert w.n_acked() == w.produced
    ends = verify_log(broker, topic, w, exactly_once=idempotent)

    # And once more after a clean restart (SIGTERM) — then new writes continue the offsets.
    broker.restart()
    assert verify_log(broker, topic, w, exactly_once=idempotent) == ends
    produce_after(broker, topic, ends)


@pytest.mark.parametrize("idempotent", [False, True], ids=["acks-all", "idempotent"])
def test_acked_records_survive_kill9(broker_factory, idempotent):
    broker = broker_factory()
    run_kill_cycles(broker, f"durable-{'idem' if idempotent else 'plain'}", idempotent, cycles=2, per_cycle=20_000)


@pytest.mark.slow
@pytest.mark.parametrize("idempotent", [False, True], ids=["acks-all", "idempotent"])
def test_acked_records_survive_many_kill9(broker_factory, idempotent):
    """Soak: ten kill -9 cycles, with small ledgers so kills also land around ledger rollovers."""
    broker = broker_factory(configs={"ledger.rollover.bytes": "262144"})
    run_kill_cycles(broker, "durable-soak", idempotent, cycles=10, per_cycle=30_000)
