"""The history of a verify run: one JSON object per line, in the order events happened.

Jepsen's vocabulary, so a history reads like one of Jepsen's: every operation is an ``invoke`` event
followed by its completion, ``ok`` (it happened), ``fail`` (it certainly did not) or ``info``
(indeterminate: it may or may not have happened). Fields of an event:

* ``index`` (position in the history), ``time`` (seconds since the run began), ``process`` (who did it),
  ``type`` (invoke/ok/fail/info), ``f`` (what: send, poll, commit, assign, leader, final-read).
* ``topic``, ``partition``, ``value`` (a unique integer), ``offset``, ``epoch`` (leader epoch, when known).
* ``records`` (poll): ``[[partition, offset, value, epoch], ...]`` in the order the consumer received them.
* ``partitions`` (assign): the partitions the consumer now has; a poll after it starts afresh.
* ``group`` and ``offsets`` (commit): ``[[partition, offset], ...]``, the next offsets to consume.
* ``node`` (leader): the broker a process was told leads ``partition`` at ``epoch``.
* ``error`` on fail/info: what the client said.

Sends are asynchronous, so a send's completion is paired with its invocation by ``value`` (values are
unique); every other operation by ``process`` (one operation at a time per process). A send invoked but
never completed is indeterminate, as Jepsen treats a crashed client's operation.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
TYPES = (INVOKE, OK, FAIL, INFO)
SEND, POLL, COMMIT, ASSIGN, LEADER, FINAL_READ = "send", "poll", "commit", "assign", "leader", "final-read"
NEMESIS = "nemesis"

Record = tuple[int, int, int, int | None]
"""One polled record: partition, offset, value, leader epoch (None when unknown)."""


@dataclass(frozen=True)
class Event:
    """One line of the history (see the module docstring for the fields)."""

    index: int
    time: float
    process: str
    type: str
    f: str
    topic: str | None = None
    partition: int | None = None
    value: int | None = None
    offset: int | None = None
    epoch: int | None = None
    node: int | None = None
    group: str | None = None
    records: tuple[Record, ...] = ()
    partitions: tuple[int, ...] = ()
    offsets: tuple[tuple[int, int], ...] = ()
    error: str | None = None
    fault: str | None = None
    """A nemesis event's fault (``kill broker 2``...): f is ``nemesis``, invoke at its start, ok at its end."""

    def to_json(self) -> dict[str, Any]:
        """Only the fields that are set, so a line stays short."""
        out: dict[str, Any] = {"index": self.index, "time": round(self.time, 6), "process": self.process,
                               "type": self.type, "f": self.f}  # fmt: skip
        for name in ("topic", "partition", "value", "offset", "epoch", "node", "group", "error", "fault"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        if self.records:
            out["records"] = [list(r) for r in self.records]
        if self.partitions:
            out["partitions"] = list(self.partitions)
        if self.offsets:
            out["offsets"] = [list(o) for o in self.offsets]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        if d.get("type") not in TYPES:
            raise ValueError(f"event {d.get('index')}: type must be one of {TYPES}, not {d.get('type')!r}")

        def opt_int(name: str) -> int | None:
            v = d.get(name)
            return None if v is None else int(v)

        return cls(
            index=int(d["index"]), time=float(d.get("time", 0.0)), process=str(d["process"]), type=d["type"],
            f=str(d["f"]), topic=d.get("topic"), partition=opt_int("partition"), value=opt_int("value"),
            offset=opt_int("offset"), epoch=opt_int("epoch"), node=opt_int("node"), group=d.get("group"),
            records=tuple((int(r[0]), int(r[1]), int(r[2]), None if len(r) < 4 or r[3] is None else int(r[3]))
                          for r in d.get("records", ())),
            partitions=tuple(int(p) for p in d.get("partitions", ())),
            offsets=tuple((int(p), int(o)) for p, o in d.get("offsets", ())),
            error=d.get("error"), fault=d.get("fault"),
        )  # fmt: skip


@dataclass
class HistoryWriter:
    """Thread-safe: client threads and librdkafka callbacks append events; each is written as it happens,
    so a run that dies midway still leaves a history that can be checked."""

    out: IO[str] | None = None
    events: list[Event] = field(default_factory=list)
    keep: bool = True
    """Keep events in memory too (the run checks them at the end without re-reading the file)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _start: float = field(default_factory=time.monotonic, repr=False)
    _n: int = field(default=0, repr=False)

    def add(self, process: str, type: str, f: str, **fields: Any) -> Event:
        with self._lock:
            event = Event(index=self._n, time=round(time.monotonic() - self._start, 6), process=process, type=type, f=f,
                          **fields)  # fmt: skip
            self._n += 1
            if self.keep:
                self.events.append(event)
            if self.out is not None:
                self.out.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
            return event

    def flush(self) -> None:
        with self._lock:
            if self.out is not None:
                self.out.flush()


def read_history(path: str | Path) -> list[Event]:
    """Every event of a JSON-lines history file (blank lines skipped; a torn last line is ignored)."""
    with open(path, encoding="utf-8") as f:
        return list(parse_lines(f))


def parse_lines(lines: Iterable[str]) -> Iterator[Event]:
    pending: str | None = None
    for line in lines:
        if pending is not None:  # the line before was bad, and it was not the last one
            raise ValueError(f"bad history line: {pending[:200]!r}")
        text = line.strip()
        if not text:
            continue
        try:
            yield Event.from_json(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            pending = f"{text} ({e})"


def write_history(path: str | Path, events: Iterable[Event]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e.to_json(), separators=(",", ":")) + "\n")
