"""A pure checker for Kafka-like histories (brokers/verify/history.py): Jepsen's Kafka anomaly classes plus
Tidelog's own invariants about leader epochs, ownership and committed offsets.

It reads nothing and talks to nobody, so it can be tested on planted histories and run on any recorded one.
Definitions (a *key* is a topic-partition; *known offsets* of a key are those any ok send or any poll saw):

* ``lost-write``: an acknowledged send whose value no read ever saw, although reads covered its offset
  (some poll read that offset or a later one, or a final read reached past it). Indeterminate sends that
  no one read are not lost; if someone read them, they happened and count as acknowledged.
* ``duplicate``: one value at two offsets.  ``inconsistent-offsets``: two values at one offset.
* ``nonmonotonic-poll``: a consumer's successive records of one key go back or repeat, with no assignment
  (assign, rebalance, seek) in between.  ``poll-skip``: they jump over known offsets.
* ``nonmonotonic-send``: one producer's acknowledged offsets for one key, in send order, do not rise.
* ``aborted-read``: a read of a value whose send definitely failed.
* ``epoch-regression``: along a key's offsets the records' leader epochs fall, or one process is told a
  lower leader epoch for a key than it was told before.
* ``multiple-owners``: two brokers reported as leader of one key at one epoch.
* ``commit-regression``: a group's committed offset for a key is lower than one committed before that
  commit was invoked (concurrent commits are not ordered and not compared).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from brokers.verify.history import ASSIGN, COMMIT, FAIL, FINAL_READ, INFO, INVOKE, LEADER, OK, POLL, SEND, Event

CLASSES = (
    "lost-write", "duplicate", "inconsistent-offsets", "nonmonotonic-poll", "poll-skip", "nonmonotonic-send",
    "aborted-read", "epoch-regression", "multiple-owners", "commit-regression",
)  # fmt: skip
RESETS = frozenset({ASSIGN, "subscribe", "seek", "rebalance"})
"""Operations after which a consumer's position may legitimately move anywhere."""
DEFAULT_EXAMPLES = 8

Key = tuple[str | None, int]


@dataclass(frozen=True)
class Op:
    """An invocation paired with its completion (``type`` is ok/fail/info; info when it never completed)."""

    process: str
    f: str
    type: str
    invoke_index: int
    complete_index: int
    event: Event
    """The completion, or the invocation when there was none (carries the fields)."""


def pair(events: Iterable[Event]) -> list[Op]:
    """Operations from events: sends paired by value, the rest by process; unfinished ones are info."""
    ops: list[Op] = []
    open_sends: dict[int | None, Event] = {}
    open_other: dict[str, Event] = {}
    for e in sorted(events, key=lambda e: e.index):
        if e.type == INVOKE:
            if e.f == SEND:
                open_sends[e.value] = e
            else:
                open_other[e.process] = e
            continue
        inv = open_sends.pop(e.value, None) if e.f == SEND else open_other.pop(e.process, None)
        if inv is not None and inv.f != e.f:  # a standalone event (a rebalance callback) amid another op
            open_other[e.process] = inv
            inv = None
        merged = e if inv is None else _merge(inv, e)
        ops.append(Op(e.process, e.f, e.type, inv.index if inv else e.index, e.index, merged))
    ops.extend(_unfinished(inv) for inv in [*open_sends.values(), *open_other.values()])
    ops.sort(key=lambda o: o.complete_index)
    return ops


def _unfinished(inv: Event) -> Op:
    return Op(inv.process, inv.f, INFO, inv.index, 1 << 62, inv)


def _merge(inv: Event, done: Event) -> Event:
    """The completion, with fields only the invocation had (a send's partition) filled in."""
    fill = {name: getattr(inv, name) for name in ("topic", "partition", "value", "group")
            if getattr(done, name) is None and getattr(inv, name) is not None}  # fmt: skip
    if not fill:
        return done
    return Event(**{**done.__dict__, **fill})


class _Report:
    def __init__(self, max_examples: int) -> None:
        self.max = max_examples
        self.counts: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self.examples: dict[str, list[dict[str, Any]]] = {c: [] for c in CLASSES}

    def add(self, cls: str, **example: Any) -> None:
        self.counts[cls] += 1
        if len(self.examples[cls]) < self.max:
            self.examples[cls].append(example)


def check(events: Iterable[Event], max_examples: int = DEFAULT_EXAMPLES) -> dict[str, Any]:
    """Analyse a history; the summary: ``valid?``, ``operations``, ``anomalies`` (class -> count and
    examples, only classes found), ``anomaly-counts`` (every class), and ``stats``."""
    ops = pair(events)
    report = _Report(max_examples)
    sends = [o for o in ops if o.f == SEND]
    reads = [o for o in ops if o.f in (POLL, FINAL_READ) and o.type in (OK, INFO) and o.event.records]

    send_type: dict[int, str] = {}
    values_at: dict[tuple[Key, int], set[int]] = defaultdict(set)
    offsets_of: dict[int, set[tuple[Key, int]]] = defaultdict(set)
    read_values: set[int] = set()
    covered: dict[Key, int] = {}
    epochs: dict[Key, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))

    for o in sends:
        e = o.event
        if e.value is None:
            continue
        send_type[e.value] = o.type
        if o.type == OK and e.partition is not None and e.offset is not None:
            key = (e.topic, e.partition)
            values_at[(key, e.offset)].add(e.value)
            offsets_of[e.value].add((key, e.offset))
            if e.epoch is not None:
                epochs[key][e.offset].add(e.epoch)
    for o in reads:
        for p, offset, value, epoch in o.event.records:
            key = (o.event.topic, p)
            values_at[(key, offset)].add(value)
            offsets_of[value].add((key, offset))
            read_values.add(value)
            covered[key] = max(covered.get(key, -1), offset)
            if epoch is not None:
                epochs[key][offset].add(epoch)
    for o in ops:
        if o.f == FINAL_READ and o.type == OK and o.event.partition is not None and o.event.offset is not None:
            key = (o.event.topic, o.event.partition)
            covered[key] = max(covered.get(key, -1), o.event.offset - 1)  # offset: the high watermark reached

    known: dict[Key, list[int]] = defaultdict(list)
    for key, offset in values_at:
        known[key].append(offset)
    for offs in known.values():
        offs.sort()

    unseen = 0
    for o in sends:
        e = o.event
        if o.type != OK or e.value is None or e.value in read_values:
            continue
        read_up_to = covered.get((e.topic, e.partition), -1) if e.partition is not None else -1
        if e.offset is not None and e.offset <= read_up_to:
            report.add("lost-write", value=e.value, topic=e.topic, partition=e.partition, offset=e.offset,
                       process=o.process, index=o.complete_index, read_up_to=read_up_to)  # fmt: skip
        else:
            unseen += 1
    for value in sorted(read_values):
        if send_type.get(value) == FAIL:
            report.add("aborted-read", value=value, at=sorted(_loc(k, off) for k, off in offsets_of[value]))
    for value, where in sorted(offsets_of.items()):
        if len(where) > 1:
            report.add("duplicate", value=value, at=sorted(_loc(k, off) for k, off in where))
    for (key, offset), values in sorted(values_at.items(), key=lambda kv: (str(kv[0][0][0]), kv[0][0][1], kv[0][1])):
        if len(values) > 1:
            report.add("inconsistent-offsets", topic=key[0], partition=key[1], offset=offset, values=sorted(values))

    _check_polls(ops, known, report)
    _check_sends(sends, report)
    _check_epochs(ops, epochs, report)
    _check_commits(ops, report)

    found = {c: {"count": n, "examples": report.examples[c]} for c, n in report.counts.items() if n}
    by_f: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for o in ops:
        by_f[o.f][o.type] += 1
    return {
        "valid?": not found,
        "operations": len(ops),
        "anomalies": found,
        "anomaly-counts": dict(report.counts),
        "stats": {
            "ops": {f: dict(t) for f, t in sorted(by_f.items())},
            "acknowledged": sum(1 for t in send_type.values() if t == OK),
            "indeterminate": sum(1 for t in send_type.values() if t == INFO),
            "failed": sum(1 for t in send_type.values() if t == FAIL),
            "indeterminate-read": sum(1 for v, t in send_type.items() if t == INFO and v in read_values),
            "values-read": len(read_values),
            "acknowledged-unseen": unseen,
        },
    }


def _loc(key: Key, offset: int) -> list[Any]:
    return [key[0], key[1], offset]


def _check_polls(ops: Sequence[Op], known: dict[Key, list[int]], report: _Report) -> None:
    """Per consumer and key, records must follow each other in the log's order, none known left out."""
    last: dict[tuple[str, Key], int] = {}
    for o in ops:
        if o.f in RESETS and o.type == OK:
            for k in [k for k in last if k[0] == o.process]:
                del last[k]
            continue
        if o.f != POLL or o.type not in (OK, INFO):
            continue
        for p, offset, value, _epoch in o.event.records:
            key = (o.event.topic, p)
            prev = last.get((o.process, key))
            last[(o.process, key)] = offset
            if prev is None:
                continue
            if offset <= prev:
                report.add("nonmonotonic-poll", process=o.process, topic=key[0], partition=p, previous=prev,
                           offset=offset, value=value, index=o.complete_index)  # fmt: skip
                continue
            offs = known.get(key, [])
            lo, hi = bisect.bisect_right(offs, prev), bisect.bisect_left(offs, offset)
            if hi > lo:
                report.add("poll-skip", process=o.process, topic=key[0], partition=p, previous=prev, offset=offset,
                           skipped=hi - lo, first_skipped=offs[lo], index=o.complete_index)  # fmt: skip


def _check_sends(sends: Sequence[Op], report: _Report) -> None:
    """One producer's acknowledged sends to one key, in the order it sent them, get rising offsets."""
    last: dict[tuple[str, Key], tuple[int, int]] = {}
    for o in sorted(sends, key=lambda o: o.invoke_index):
        e = o.event
        if o.type != OK or e.partition is None or e.offset is None:
            continue
        k = (o.process, (e.topic, e.partition))
        prev = last.get(k)
        if prev is not None and e.offset <= prev[0]:
            report.add("nonmonotonic-send", process=o.process, topic=e.topic, partition=e.partition,
                       previous_offset=prev[0], previous_value=prev[1], offset=e.offset, value=e.value)  # fmt: skip
        last[k] = (e.offset, e.value if e.value is not None else -1)


def _check_epochs(ops: Sequence[Op], epochs: dict[Key, dict[int, set[int]]], report: _Report) -> None:
    for key, by_offset in epochs.items():
        high, high_at = -1, -1
        for offset in sorted(by_offset):
            lo, hi = min(by_offset[offset]), max(by_offset[offset])
            if lo < high:
                report.add("epoch-regression", topic=key[0], partition=key[1], offset=offset, epoch=lo,
                           earlier_offset=high_at, earlier_epoch=high)  # fmt: skip
            if hi > high:
                high, high_at = hi, offset
    told: dict[tuple[str, Key], int] = {}
    owners: dict[tuple[Key, int], set[int]] = defaultdict(set)
    for o in ops:
        e = o.event
        if o.f != LEADER or o.type != OK or e.partition is None or e.epoch is None:
            continue
        key = (e.topic, e.partition)
        prev = told.get((o.process, key))
        if prev is not None and e.epoch < prev:
            report.add("epoch-regression", process=o.process, topic=key[0], partition=key[1], epoch=e.epoch,
                       earlier_epoch=prev, index=o.complete_index)  # fmt: skip
        told[(o.process, key)] = max(e.epoch, prev if prev is not None else e.epoch)
        if e.node is not None and e.node >= 0:
            owners[(key, e.epoch)].add(e.node)
    for (key, epoch), nodes in owners.items():
        if len(nodes) > 1:
            report.add("multiple-owners", topic=key[0], partition=key[1], epoch=epoch, nodes=sorted(nodes))


def _check_commits(ops: Sequence[Op], report: _Report) -> None:
    """Each ok commit against the highest commit of its group and key that completed before it began."""
    commits: dict[tuple[str | None, Key], list[tuple[int, int, int, str]]] = defaultdict(list)
    for o in ops:
        if o.f == COMMIT and o.type == OK:
            for p, offset in o.event.offsets:
                commits[(o.event.group, (o.event.topic, p))].append(
                    (o.invoke_index, o.complete_index, offset, o.process)
                )
    for (group, key), cs in commits.items():
        by_completion = sorted(cs, key=lambda c: c[1])
        i, best = 0, -1
        for inv, _done, offset, process in sorted(cs, key=lambda c: c[0]):
            while i < len(by_completion) and by_completion[i][1] < inv:
                best = max(best, by_completion[i][2])
                i += 1
            if offset < best:
                report.add("commit-regression", group=group, topic=key[0], partition=key[1], offset=offset,
                           committed_before=best, process=process, index=inv)  # fmt: skip
