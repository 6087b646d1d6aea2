"""The verify checker (brokers/verify/checker.py) on planted histories: each anomaly class is reported, and
nothing else is; a clean history and indeterminate sends are valid; and any history generated from a correct
log model is valid (issue 11, must-show 5)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.verify.checker import CLASSES, check
from brokers.verify.history import (
    ASSIGN,
    COMMIT,
    FAIL,
    FINAL_READ,
    INFO,
    INVOKE,
    LEADER,
    OK,
    POLL,
    SEND,
    Event,
    HistoryWriter,
    parse_lines,
    read_history,
)

T = "t"


class H:
    """A history under construction, with shorthands for the workload's operations."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, process: str, type_: str, f: str, **fields: Any) -> None:
        self.events.append(Event(index=len(self.events), time=len(self.events) / 100, process=process, type=type_,
                                 f=f, topic=T, **fields))  # fmt: skip

    def send(self, proc: str, p: int, value: int, offset: int | None, outcome: str = OK) -> None:
        self.add(proc, INVOKE, SEND, partition=p, value=value)
        self.add(proc, outcome, SEND, partition=p, value=value, offset=offset if outcome == OK else None)

    def poll(self, proc: str, *records: tuple[int, int, int] | tuple[int, int, int, int]) -> None:
        recs = tuple((r[0], r[1], r[2], r[3] if len(r) > 3 else None) for r in records)
        self.add(proc, INVOKE, POLL)
        self.add(proc, OK, POLL, records=recs)

    def assign(self, proc: str, *partitions: int) -> None:
        self.add(proc, OK, ASSIGN, partitions=partitions)

    def commit(self, proc: str, *offsets: tuple[int, int], group: str = "g") -> None:
        self.add(proc, INVOKE, COMMIT, group=group, offsets=offsets)
        self.add(proc, OK, COMMIT, group=group, offsets=offsets)

    def leader(self, proc: str, p: int, node: int, epoch: int) -> None:
        self.add(proc, OK, LEADER, partition=p, node=node, epoch=epoch)

    def final(self, p: int, high: int) -> None:
        self.add("final", OK, FINAL_READ, partition=p, offset=high)


def clean() -> H:
    """Values 0..5 to partition 0 (offsets 0..5) and 10..13 to partition 1, read in order by a consumer
    that commits, then by a final read; leaders observed consistently."""
    h = H()
    h.leader("obs", 0, 1, 1)
    h.leader("obs", 1, 2, 1)
    for i in range(6):
        h.send("prod", 0, i, i)
    for i in range(4):
        h.send("prod", 1, 10 + i, i)
    h.assign("cons", 0, 1)
    h.poll("cons", (0, 0, 0, 1), (0, 1, 1, 1), (0, 2, 2, 1), (1, 0, 10, 1))
    h.commit("cons", (0, 3), (1, 1))
    h.poll("cons", (0, 3, 3, 1), (1, 1, 11, 1))
    h.commit("cons", (0, 4), (1, 2))
    final_read(h, {0: [0, 1, 2, 3, 4, 5], 1: [10, 11, 12, 13]})
    return h


def final_read(h: H, logs: dict[int, list[int]], high: dict[int, int] | None = None) -> None:
    h.assign("final", *logs)
    for p, values in logs.items():
        h.poll("final", *((p, o, v) for o, v in enumerate(values)))
    for p, values in logs.items():
        h.final(p, (high or {}).get(p, len(values)))


def found(h: H) -> dict[str, Any]:
    summary = check(h.events)
    assert summary["valid?"] is (not summary["anomalies"])
    return summary


def only(summary: dict[str, Any], cls: str) -> list[dict[str, Any]]:
    assert set(summary["anomalies"]) == {cls}, summary["anomalies"]
    assert summary["valid?"] is False
    examples: list[dict[str, Any]] = summary["anomalies"][cls]["examples"]
    assert examples
    return examples


def test_clean_history_is_valid() -> None:
    s = found(clean())
    assert s["valid?"] is True
    assert s["anomalies"] == {}
    assert set(s["anomaly-counts"]) == set(CLASSES)
    assert s["stats"]["acknowledged"] == 10
    assert s["stats"]["values-read"] == 10


def test_lost_write() -> None:
    h = clean()
    h.send("prod", 0, 99, 6)  # acknowledged at offset 6; the final read reaches the high watermark 7 without it
    h.final(0, 7)
    (ex,) = only(found(h), "lost-write")
    assert (ex["value"], ex["partition"], ex["offset"]) == (99, 0, 6)


def test_acknowledged_but_not_yet_covered_is_not_lost() -> None:
    h = clean()
    h.send("prod", 0, 99, 6)  # no read reached offset 6: unseen, not lost
    s = found(h)
    assert s["valid?"] is True
    assert s["stats"]["acknowledged-unseen"] == 1


def test_duplicate() -> None:
    h = clean()
    h.poll("final", (0, 6, 2))  # value 2 again, at offset 6
    h.final(0, 7)
    (ex,) = only(found(h), "duplicate")
    assert ex["value"] == 2
    assert ex["at"] == [[T, 0, 2], [T, 0, 6]]


def test_inconsistent_offsets() -> None:
    h = clean()
    h.send("prod", 1, 20, 4)
    h.send("prod2", 1, 21, 4)  # both acknowledged at offset 4 of partition 1, and each read by someone
    h.poll("cons", (1, 2, 12), (1, 3, 13), (1, 4, 20))
    h.assign("other", 1)
    h.poll("other", (1, 4, 21))
    (ex,) = only(found(h), "inconsistent-offsets")
    assert (ex["partition"], ex["offset"], ex["values"]) == (1, 4, [20, 21])


def test_nonmonotonic_poll() -> None:
    h = clean()
    h.poll("cons", (0, 4, 4), (0, 2, 2))  # back from offset 4 to 2 with no assignment in between
    (ex,) = only(found(h), "nonmonotonic-poll")
    assert (ex["process"], ex["previous"], ex["offset"]) == ("cons", 4, 2)


def test_going_back_after_an_assignment_is_fine() -> None:
    h = clean()
    h.assign("cons", 0)
    h.poll("cons", (0, 1, 1), (0, 2, 2))
    assert found(h)["valid?"] is True


def test_poll_skip() -> None:
    h = clean()
    h.poll("cons", (0, 5, 5))  # the consumer was at offset 3: offset 4 exists and was jumped over
    (ex,) = only(found(h), "poll-skip")
    assert (ex["previous"], ex["offset"], ex["skipped"], ex["first_skipped"]) == (3, 5, 1, 4)


def test_nonmonotonic_send() -> None:
    h = clean()
    h.send("prod", 2, 30, 1)
    h.send("prod", 2, 31, 0)  # sent after 30, acknowledged at a lower offset: the producer's order was broken
    h.assign("final", 2)
    h.poll("final", (2, 0, 31), (2, 1, 30))
    h.final(2, 2)
    (ex,) = only(found(h), "nonmonotonic-send")
    assert (ex["previous_value"], ex["value"], ex["previous_offset"], ex["offset"]) == (30, 31, 1, 0)


def test_aborted_read() -> None:
    h = clean()
    h.send("prod", 0, 77, None, outcome=FAIL)
    h.poll("final", (0, 6, 77))
    h.final(0, 7)
    (ex,) = only(found(h), "aborted-read")
    assert ex["value"] == 77


def test_epoch_regression_along_the_log() -> None:
    h = clean()
    h.poll("cons", (0, 4, 4, 3), (0, 5, 5, 2))  # epoch 3 at offset 4, then 2 at offset 5
    (ex,) = only(found(h), "epoch-regression")
    assert (ex["offset"], ex["epoch"], ex["earlier_epoch"]) == (5, 2, 3)


def test_epoch_regression_in_a_process_view() -> None:
    h = clean()
    h.leader("obs", 0, 1, 3)
    h.leader("obs", 0, 1, 2)
    (ex,) = only(found(h), "epoch-regression")
    assert (ex["process"], ex["epoch"], ex["earlier_epoch"]) == ("obs", 2, 3)


def test_multiple_owners() -> None:
    h = clean()
    h.leader("obs", 0, 2, 2)
    h.leader("obs2", 0, 3, 2)  # two brokers named leader of partition 0 at epoch 2
    (ex,) = only(found(h), "multiple-owners")
    assert (ex["partition"], ex["epoch"], ex["nodes"]) == (0, 2, [2, 3])


def test_commit_regression() -> None:
    h = clean()
    h.commit("cons2", (0, 2))  # after 4 was committed
    (ex,) = only(found(h), "commit-regression")
    assert (ex["offset"], ex["committed_before"]) == (2, 4)


def test_concurrent_commits_are_not_ordered() -> None:
    h = clean()
    h.add("a", INVOKE, COMMIT, group="g", offsets=((0, 6),))
    h.add("b", INVOKE, COMMIT, group="g", offsets=((0, 5),))
    h.add("a", OK, COMMIT, group="g", offsets=((0, 6),))
    h.add("b", OK, COMMIT, group="g", offsets=((0, 5),))
    assert found(h)["valid?"] is True


def test_indeterminate_sends() -> None:
    h = clean()
    h.send("prod", 0, 40, None, outcome=INFO)  # never read: not lost
    h.send("prod", 0, 41, None, outcome=INFO)  # read: it happened
    h.add("prod", INVOKE, SEND, partition=0, value=42)  # never completed (the client died): indeterminate
    h.poll("final", (0, 6, 41))
    h.final(0, 7)
    s = found(h)
    assert s["valid?"] is True
    assert s["stats"]["indeterminate"] == 3
    assert s["stats"]["indeterminate-read"] == 1


def test_history_round_trip(tmp_path: Any) -> None:
    path = tmp_path / "h.jsonl"
    with open(path, "w") as f:
        w = HistoryWriter(f)
        w.add("p", INVOKE, SEND, topic=T, partition=0, value=1)
        w.add("c", OK, POLL, topic=T, records=((0, 0, 1, None), (0, 1, 2, 3)))
        w.add("g", OK, COMMIT, topic=T, group="g", offsets=((0, 2),))
    events = read_history(path)
    assert events == w.events
    with open(path) as f:
        torn = [*f.readlines(), '{"index": 3, "ti']  # a run killed mid-line: the torn last line is dropped
    assert list(parse_lines(torn)) == events


# --- a correct log model: whatever it does, the history is valid ------------------------------------------
ACTION = st.one_of(
    st.tuples(
        st.just("send"), st.integers(0, 2), st.integers(0, 1), st.sampled_from(["ok", "ok", "in", "out", "fail"])
    ),
    st.tuples(st.just("poll"), st.integers(0, 2), st.integers(1, 4)),
    st.tuples(st.just("assign"), st.integers(0, 2), st.integers(0, 100)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("epoch"), st.integers(0, 1), st.integers(1, 3)),
    st.tuples(st.just("observe"), st.integers(0, 1), st.integers(0, 1)),
)


def model_history(actions: list[tuple[Any, ...]]) -> H:
    """Two partitions with leaders and epochs; producers append (or not, when indeterminate or failed);
    consumer 0 is a group member (resumes from its commits, commits its position), 1 and 2 assign
    themselves at any offset; a final read at the end."""
    h = H()
    logs: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    epoch, owner = {0: 0, 1: 0}, {0: 1, 1: 1}
    pos: dict[int, dict[int, int]] = {c: {0: 0, 1: 0} for c in range(3)}
    committed = {0: 0, 1: 0}
    seq = 0
    for a in actions:
        if a[0] == "send":
            _, prod, p, outcome = a
            seq += 1
            value = prod * 1000 + seq
            h.add(f"prod{prod}", INVOKE, SEND, partition=p, value=value)
            if outcome in ("ok", "in"):
                logs[p].append((value, epoch[p]))
            if outcome == "ok":
                h.add(f"prod{prod}", OK, SEND, partition=p, value=value, offset=len(logs[p]) - 1)
            else:
                h.add(f"prod{prod}", FAIL if outcome == "fail" else INFO, SEND, partition=p, value=value)
        elif a[0] == "poll":
            _, c, n = a
            recs = []
            for p in (0, 1):
                for o in range(pos[c][p], min(pos[c][p] + n, len(logs[p]))):
                    recs.append((p, o, logs[p][o][0], logs[p][o][1]))
                pos[c][p] = min(pos[c][p] + n, len(logs[p]))
            if recs:
                h.poll(f"cons{c}", *recs)
        elif a[0] == "assign":
            _, c, at = a
            for p in (0, 1):
                pos[c][p] = committed[p] if c == 0 else at % (len(logs[p]) + 1)
            h.assign(f"cons{c}", 0, 1)
        elif a[0] == "commit":
            offsets = tuple((p, pos[0][p]) for p in (0, 1))
            committed = dict(offsets)
            h.commit("cons0", *offsets)
        elif a[0] == "epoch":
            _, p, node = a
            epoch[p] += 1
            owner[p] = node
        else:
            _, obs, p = a
            h.leader(f"obs{obs}", p, owner[p], epoch[p])
    h.assign("final", 0, 1)
    for p in (0, 1):
        if logs[p]:
            h.poll("final", *((p, o, v, e) for o, (v, e) in enumerate(logs[p])))
        h.final(p, len(logs[p]))
    return h


@settings(max_examples=150, deadline=None)
@given(st.lists(ACTION, max_size=60))
def test_histories_of_a_correct_log_are_valid(actions: list[tuple[Any, ...]]) -> None:
    summary = check(model_history(actions).events)
    assert summary["valid?"] is True, summary["anomalies"]


def test_a_rebalance_inside_a_commit_does_not_unpair_it() -> None:
    h = clean()
    h.add("cons", INVOKE, COMMIT, group="g", offsets=((0, 6),))
    h.assign("cons", 0, 1)  # a callback recorded while the commit was in flight
    h.add("cons", OK, COMMIT, group="g", offsets=((0, 6),))
    h.commit("cons", (0, 5))  # after the commit of 6 completed: a regression only if the pairing held
    (ex,) = only(found(h), "commit-regression")
    assert (ex["offset"], ex["committed_before"]) == (5, 6)


def test_verify_check_exit_codes(tmp_path: Any, capsys: Any) -> None:
    from brokers.cli import main
    from brokers.verify.history import write_history

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write_history(good, clean().events)
    h = clean()
    h.poll("cons", (0, 4, 4), (0, 2, 2))
    write_history(bad, h.events)
    assert main(["verify", "check", str(good)]) == 0
    assert main(["verify", "check", str(bad)]) == 1
    assert '"nonmonotonic-poll"' in capsys.readouterr().out
    assert main(["verify", "check", str(tmp_path / "missing.jsonl")]) == 2
