"""Consumer-group members of every client as subprocesses, and what they consumed, for the group e2e tests.

A member is a real client process subscribed to a topic in a group: ``groups_worker.py`` for
confluent-kafka, kafka-python and aiokafka, ``node/group_consumer.js`` for kafkajs, and ``kcat -G``.
Each prints one line per consumed record (JSON events for the scripts, ``partition offset value`` for
kcat); a reader thread parses them. ``stop()`` sends SIGTERM: the client closes cleanly and leaves the
group. Consumption is throttled (slow batches; for kcat, slow reading of its unbuffered stdout pipe) so
rebalances happen while records are still flowing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Producer

HERE = Path(__file__).parent
WORKER = HERE / "groups_worker.py"
NODE_CONSUMER = HERE / "node" / "group_consumer.js"
CLIENTS = ("confluent", "kafka-python", "aiokafka", "kafkajs", "kcat")
STOP_TIMEOUT = 60.0  # hang guards only
WAIT_TIMEOUT = 120.0
_KCAT_ASSIGNED = re.compile(r"rebalanced .*: assigned: (.*)$")
_KCAT_REVOKED = re.compile(r"rebalanced .*: revoked: (.*)$")
_KCAT_PART = re.compile(r"\[(\d+)\]")


@dataclass
class Member:
    """One client process in a group and everything it reported."""

    name: str
    client: str
    proc: subprocess.Popen[bytes]
    records: list[tuple[int, int]] = field(default_factory=list)
    assignments: list[list[int]] = field(default_factory=list)
    revocations: list[list[int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    closed: bool = False
    line_delay: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start_readers(self) -> None:
        out = threading.Thread(target=self._read_stdout, daemon=True)
        err = threading.Thread(target=self._read_stderr, daemon=True)
        self._threads = [out, err]
        out.start()
        err.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line:
                continue
            if self.client == "kcat":
                p, o, _value = line.split(" ", 2)
                with self._lock:
                    self.records.append((int(p), int(o)))
                if self.line_delay:
                    time.sleep(self.line_delay)
                continue
            try:
                event = json.loads(line)
            except ValueError:
                with self._lock:
                    self.errors.append(f"unparsable output: {line[:200]}")
                continue
            with self._lock:
                self._apply(event)

    def _apply(self, event: dict[str, object]) -> None:
        kind = event.get("ev")
        if kind == "recs":
            self.records.extend((int(p), int(o)) for p, o in event["recs"])  # type: ignore[attr-defined]
        elif kind == "assigned":
            self.assignments.append(list(event["parts"]))  # type: ignore[call-overload]
        elif kind == "revoked":
            self.revocations.append(list(event["parts"]))  # type: ignore[call-overload]
        elif kind == "commit_error":
            self.errors.append(str(event.get("error")))
        elif kind == "closed":
            self.closed = True

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._lock:
                self.stderr_lines.append(line)
                if self.client == "kcat":
                    m = _KCAT_ASSIGNED.search(line)
                    if m:
                        self.assignments.append(sorted(int(p) for p in _KCAT_PART.findall(m.group(1))))
                    m = _KCAT_REVOKED.search(line)
                    if m:
                        self.revocations.append(sorted(int(p) for p in _KCAT_PART.findall(m.group(1))))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def snapshot(self) -> list[tuple[int, int]]:
        with self._lock:
            return list(self.records)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait for a clean exit (the client leaves the group); output is read to the end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM\n{self.tail()}") from None
        for t in self._threads:
            t.join(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 30) -> str:
        with self._lock:
            return "\n".join(self.stderr_lines[-n:])


def spawn(
    client: str,
    bootstrap: str,
    group: str,
    topic: str,
    name: str,
    batch: int = 50,
    delay: float = 0.05,
    instance_id: str = "",
    strategy: str = "",
    session_ms: int = 6000,
) -> Member:
    """Start one member of ``group`` using ``client``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    line_delay = 0.0
    if client == "kafkajs":
        cmd = ["node", str(NODE_CONSUMER), bootstrap, group, topic, str(batch), str(int(delay * 1000))]
    elif client == "kcat":
        cmd = [
            "kcat", "-b", bootstrap, "-G", group, topic, "-u", "-f", "%p %o %s\\n",
            "-X", "auto.offset.reset=earliest", "-X", f"session.timeout.ms={session_ms}",
            "-X", "heartbeat.interval.ms=300", "-X", "fetch.wait.max.ms=100",
            "-X", "queued.max.messages.kbytes=64",
        ]
        if instance_id:
            cmd += ["-X", f"group.instance.id={instance_id}"]
        if strategy:
            cmd += ["-X", f"partition.assignment.strategy={strategy}"]
        line_delay = delay / max(batch, 1)
    else:
        cmd = [
            sys.executable, str(WORKER), client, bootstrap, group, topic, "--batch", str(batch),
            "--delay", str(delay), "--session-ms", str(session_ms),
        ]
        if instance_id:
            cmd += ["--instance-id", instance_id]
        if strategy:
            cmd += ["--strategy", strategy]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=HERE)
    member = Member(name, client, proc, line_delay=line_delay)
    member.start_readers()
    return member


def wait_until(
    what: str, condition: Callable[[], bool], members: Sequence[Member] = (), timeout: float = WAIT_TIMEOUT
) -> None:
    """Poll ``condition()`` (a hang guard: the timeout only turns a hang into a failure with context)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = "\n".join(
                f"--- {m.name}: {m.count} records, assignments {m.assignments}, errors {m.errors[:5]}, "
                f"running={m.running}\n{m.tail()}"
                for m in members
            )
            raise AssertionError(f"timed out waiting for {what}\n{detail}")
        for m in members:
            if not m.running and not m.closed and m.proc.returncode not in (0, None, -signal.SIGTERM, 143):
                raise AssertionError(f"{m.name} exited with {m.proc.returncode}\n{m.tail()}")
        time.sleep(0.05)


def produce(bootstrap: str, topic: str, count: int, partitions: int, first: int = 0) -> dict[int, int]:
    """``count`` records with ASCII values (index ``first``..), round-robin over partitions.

    Returns how many records each partition got.
    """
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    errors: list[str] = []
    per: Counter[int] = Counter()
    for i in range(first, first + count):
        part = i % partitions
        value = f"{i:08d}-".encode() + b"v" * 120
        while True:
            try:
                p.produce(topic, value=value, partition=part, on_delivery=lambda e, _m: e and errors.append(str(e)))
                break
            except BufferError:
                p.poll(0.05)
        per[part] += 1
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(120)
    assert left == 0 and not errors, f"produce failed: {left} undelivered, errors {errors[:5]}"
    return dict(per)


def consumed(members: Sequence[Member]) -> Counter[tuple[int, int]]:
    """How many times each (partition, offset) was consumed across ``members``."""
    total: Counter[tuple[int, int]] = Counter()
    for m in members:
        total.update(m.snapshot())
    return total


def assert_exactly_once(members: Sequence[Member], expected: set[tuple[int, int]], who: str) -> None:
    counts = consumed(members)
    missing = sorted(expected - set(counts))
    extra = sorted(set(counts) - expected)
    dups = sorted(k for k, n in counts.items() if n > 1)
    assert not missing, f"{who}: {len(missing)} records never consumed, e.g. {missing[:10]}"
    assert not extra, f"{who}: {len(extra)} unexpected records consumed, e.g. {extra[:10]}"
    if dups:
        first = dups[0]
        by = [(m.name, m.snapshot().count(first), m.assignments, m.revocations, m.errors[-3:]) for m in members]
        raise AssertionError(
            f"{who}: {len(dups)} records consumed more than once, e.g. {dups[:10]}; "
            f"(name, times it got {first}, assignments, revocations, last commit errors): {by}"
        )
