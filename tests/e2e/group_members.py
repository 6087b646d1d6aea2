"""Consumer-group members for the rebalance tests: real confluent-kafka consumers, each polling in its own
thread, recording every assignment callback and every record they hand to the application.

Offsets are committed by hand (``enable.auto.commit=false``): every ``commit_every`` records, and — what
makes "exactly once across a rebalance" hold — synchronously in ``on_revoke`` for the partitions being
given up, before the client lets them go.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

POLL_S = 0.1
WAIT_TIMEOUT = 90.0  # hang guard only


@dataclass(frozen=True)
class Event:
    kind: str  # "assign" | "revoke" | "lost"
    partitions: frozenset[int]
    at: float


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT,
               detail: Callable[[], object] | None = None) -> None:
    """Poll ``check`` until it holds; fail with ``what`` (and ``detail()``) after the hang guard."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {detail() if detail else ''}")
        time.sleep(0.05)


class Member:
    """A group member running in a thread."""

    def __init__(self, name: str, bootstrap: str, group: str, topic: str, commit_every: int = 100,
                 **conf: object) -> None:
        self.name = name
        self.topic = topic
        self.commit_every = commit_every
        self.conf: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **conf,
        }
        self.lock = threading.Lock()
        self.events: list[Event] = []
        self.owned: set[int] = set()
        self.consumed: list[tuple[int, int, bytes]] = []
        self.stray: list[tuple[int, int]] = []
        """Records delivered for partitions this member did not own at that moment (must stay empty)."""
        self.commit_errors: list[str] = []
        self.errors: list[str] = []
        self.member_id = ""
        self._positions: dict[int, int] = {}
        self._uncommitted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- control ---------------------------------------------------------------------------------
    def start(self) -> Member:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.name} did not stop within {timeout}s"

    def snapshot(self) -> tuple[frozenset[int], int]:
        """(owned partitions, number of callback events so far)."""
        with self.lock:
            return frozenset(self.owned), len(self.events)

    def events_since(self, index: int) -> list[Event]:
        """Callback events from ``index`` on, leaving out empty ones (librdkafka calls on_assign with no
        partitions after an incremental revocation)."""
        with self.lock:
            return [e for e in self.events[index:] if e.partitions]

    def values(self) -> list[bytes]:
        with self.lock:
            return [v for _, _, v in self.consumed]

    # --- the consumer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        c = Consumer(self.conf)
        try:
            c.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
            while not self._stop.is_set():
                msg = c.poll(POLL_S)
                if msg is not None:
                    self._record(c, msg)
                self.member_id = c.memberid() or self.member_id
            self._commit(c, self._owned_positions())
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            c.close()

    def _record(self, c: Consumer, msg: object) -> None:
        err = msg.error()  # type: ignore[attr-defined]
        if err is not None:
            self.errors.append(str(err))
            return
        p, off, value = msg.partition(), msg.offset(), msg.value()  # type: ignore[attr-defined]
        with self.lock:
            if p not in self.owned:
                self.stray.append((p, off))
            self.consumed.append((p, off, value))
            self._positions[p] = off + 1
        self._uncommitted += 1
        if self._uncommitted >= self.commit_every:
            self._commit(c, self._owned_positions())

    def _owned_positions(self) -> dict[int, int]:
        with self.lock:
            return {p: o for p, o in self._positions.items() if p in self.owned}

    def _commit(self, c: Consumer, positions: dict[int, int], attempts: int = 1) -> bool:
        if not positions:
            return True
        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(positions.items())]
        for attempt in range(attempts):
            try:
                c.commit(offsets=offsets, asynchronous=False)
                self._uncommitted = 0
                return True
            except KafkaException as e:
                self.commit_errors.append(str(e))
                if attempt + 1 < attempts:
                    time.sleep(0.2)
        return False

    def _on_assign(self, c: Consumer, parts: list[TopicPartition]) -> None:
        ps = frozenset(tp.partition for tp in parts)
        with self.lock:
            self.owned |= ps
            self.events.append(Event("assign", ps, time.monotonic()))

    def _on_revoke(self, c: Consumer, parts: list[TopicPartition]) -> None:
        ps = frozenset(tp.partition for tp in parts)
        positions = {p: o for p, o in self._owned_positions().items() if p in ps}
        if not self._commit(c, positions, attempts=10):
            self.errors.append(f"could not commit {positions} before giving up {sorted(ps)}")
        with self.lock:
            self.owned -= ps
            for p in ps:
                self._positions.pop(p, None)
            self.events.append(Event("revoke", ps, time.monotonic()))

    def _on_lost(self, c: Consumer, parts: list[TopicPartition]) -> None:
        ps = frozenset(tp.partition for tp in parts)
        with self.lock:
            self.owned -= ps
            self.events.append(Event("lost", ps, time.monotonic()))


def assignment_settled(members: Iterable[Member], partitions: int) -> bool:
    """Every partition is owned by exactly one member and the members' loads differ by at most one."""
    owned = [m.snapshot()[0] for m in members]
    flat = [p for o in owned for p in o]
    sizes = [len(o) for o in owned]
    return sorted(flat) == list(range(partitions)) and max(sizes) - min(sizes) <= 1


class SequenceProducer:
    """Produces values ``00000000``, ``00000001``, ... round-robin over partitions, in a thread, until stopped."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, burst: int = 50, pause_s: float = 0.02) -> None:
        self.topic = topic
        self.partitions = partitions
        self.burst = burst
        self.pause_s = pause_s
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.sent = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def start(self) -> SequenceProducer:
        self._thread.start()
        return self

    def _on_delivery(self, err: object, msg: object) -> None:
        if err is not None:
            self.errors.append(str(err))

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(self.burst):
                self.produce_one()
            self.producer.poll(0)
            time.sleep(self.pause_s)

    def produce_one(self) -> None:
        seq = self.sent
        while True:
            try:
                self.producer.produce(self.topic, value=f"{seq:08d}".encode(), partition=seq % self.partitions,
                                      on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.sent += 1

    def stop(self, timeout: float = 120.0) -> int:
        """Stop, wait until everything sent is acknowledged; returns how many records were produced."""
        self._stop.set()
        if self._thread.ident is not None:  # it may have produced from the caller's thread only
            self._thread.join(timeout)
        left = self.producer.flush(timeout)
        assert left == 0, f"{left} records undelivered after {timeout}s"
        assert not self.errors, f"delivery errors: {self.errors[:5]}"
        return self.sent

    def expected(self) -> list[bytes]:
        return [f"{i:08d}".encode() for i in range(self.sent)]


def assert_healthy(*members: Member) -> None:
    """No member saw a client error or a record of a partition it did not own."""
    for m in members:
        assert not m.errors, f"{m.name}: {m.errors[:5]}"
        assert not m.stray, f"{m.name} got records of partitions it did not own: {m.stray[:5]}"


def assert_join_moved_only_to(
    first: list[Member], before: dict[str, tuple[frozenset[int], int]], joiner: Member
) -> None:
    """From the callbacks: each original member lost only what went to ``joiner``; nothing else moved."""
    moved = joiner.snapshot()[0]
    assert len(moved) in (1, 2)
    for m in first:
        owned_before, seen = before[m.name]
        after = m.events_since(seen)
        revoked = frozenset().union(*(e.partitions for e in after if e.kind == "revoke"))
        assert all(e.kind == "revoke" for e in after), f"{m.name}: {after}"
        assert revoked <= moved, f"{m.name} lost {sorted(revoked - moved)}, which did not go to the new member"
        assert m.snapshot()[0] == owned_before - revoked, f"{m.name}: its other partitions were disturbed"
    assert frozenset().union(*(before[m.name][0] - m.snapshot()[0] for m in first)) == moved
    assert all(e.kind == "assign" for e in joiner.events_since(0))


def assert_consumed_exactly_once(members: list[Member], producer: SequenceProducer) -> None:
    """Stop ``producer``; every record it sent is consumed by exactly one of ``members``."""
    total = producer.stop()
    wait_until(lambda: sum(len(m.consumed) for m in members) >= total, f"{total} records to be consumed",
               detail=lambda: {m.name: len(m.consumed) for m in members})
    got = Counter(v for m in members for v in m.values())
    dupes = [v for v, n in got.items() if n > 1]
    assert not dupes, f"{len(dupes)} records consumed twice, e.g. {dupes[:5]}"
    assert sorted(got) == producer.expected()
    assert_healthy(*members)
