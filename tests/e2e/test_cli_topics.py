"""``tidelog topics``, ``produce`` and ``consume`` as a user runs them (the real ``tidelog`` process), over the
Kafka protocol only, against two clusters (issue 12, must-show 2):

* a Tidelog dev cluster (brokers/devcluster.py: etcd, moto S3, three bookies, two brokers), shared by the
  module; every topic verb, configs included, and records that cross brokers;
* librdkafka's mock cluster (../shared/tools/mockcluster.py, run as a process; three brokers), which has no
  admin APIs: list and describe work, and create/alter/delete fail in one line naming the missing API.

Records go in with ``produce`` and come back with ``consume`` (and with confluent-kafka, a client we did not
write, where it checks key placement).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers.cli import main
from brokers.cli.records import partition_for
from brokers.devcluster import DevCluster
from tests.etcd_server import etcd_available

MOCK_TOOL = Path(__file__).resolve().parents[3] / "shared" / "tools" / "mockcluster.py"
MOCK_TOPIC = "pre"  # created by the mock at start, 4 partitions, 3 replicas
BAR_TOPIC = "bar"  # likewise, 1 partition: bulk produce with a progress bar


def tidelog(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real command, as a process (what a user runs)."""
    return subprocess.run(
        [sys.executable, "-m", "brokers.cli", *args], input=stdin, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The same entry point (brokers.cli.main) in this process: a process start costs seconds on a loaded
    2-core machine, and most checks here are about what the commands send and print, not how they start."""
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO((stdin or "").encode()))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse
                code = int(e.code or 0)
    finally:
        sys.stdin = old_stdin
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def ok(*args: str, stdin: str | None = None) -> str:
    done = cli(*args, stdin=stdin)
    assert done.returncode == 0, f"tidelog {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def ok_json(*args: str, stdin: str | None = None) -> Any:
    return json.loads(ok(*args, "--json", stdin=stdin))


def one_error_line(done: subprocess.CompletedProcess[str], code: int, prog: str) -> str:
    """The process failed with ``code`` and said why in exactly one stderr line, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not etcd_available():
        pytest.skip("etcd binary not installed (make system-deps)")
    with DevCluster(tmp_path_factory.mktemp("clitopics"), brokers=2, bookies=3) as c:
        yield c.bootstrap


@pytest.fixture(scope="module")
def mock() -> Iterator[str]:
    if not MOCK_TOOL.exists():
        pytest.skip(f"{MOCK_TOOL} not here")
    proc = subprocess.Popen(
        [sys.executable, str(MOCK_TOOL), "-n", "3", "--controller", "1", "--topic", f"{MOCK_TOPIC}:4:3",
         "--topic", f"{BAR_TOPIC}:1:1",
         "--timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("bootstrap.servers="), line
        yield line.strip().split("=", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def roundtrip(bootstrap: str, topic: str, partitions: int) -> None:
    """produce from stdin, --value with a key, and --count; consume them all back, in formats and JSON."""
    b = ("--bootstrap", bootstrap)
    piped = tidelog("produce", topic, *b, stdin="one\ntwo\nthree\n")  # a real process reading a pipe
    assert piped.returncode == 0 and "produced 3 record(s)" in piped.stderr, piped.stderr
    ok("produce", topic, "-k", "user-7", "--value", "hello", "--value", "world", *b)
    ok("produce", topic, "-K", ":", *b, stdin="k1:v1\nk2:v2\n")
    bulk = ok_json("produce", topic, "--count", "3000", "--size", "64", "-p", "1", *b)
    assert bulk["records"] == 3000 and list(bulk["partitions"]) == ["1"]
    real = tidelog("consume", topic, "--from-beginning", "-e", "--json", *b)  # a real process to the end
    assert real.returncode == 0 and real.stderr == "", real.stderr
    records = [json.loads(line) for line in real.stdout.splitlines()]
    assert len(records) == 3 + 2 + 2 + 3000
    values = {r["value"] for r in records}
    assert {"one", "two", "three", "hello", "world", "v1", "v2"} <= values
    keyed = [r for r in records if r["key"] == "user-7"]
    assert [r["value"] for r in keyed] == ["hello", "world"]
    assert {r["partition"] for r in keyed} == {partition_for(b"user-7", partitions)}  # where the Java client puts it
    assert {(r["key"], r["value"]) for r in records if r["key"] in ("k1", "k2")} == {("k1", "v1"), ("k2", "v2")}
    # offsets are consecutive per partition
    by_partition: dict[int, list[int]] = {}
    for r in records:
        by_partition.setdefault(r["partition"], []).append(r["offset"])
    assert all(offs == list(range(offs[0], offs[0] + len(offs))) for offs in by_partition.values())

    text = ok("consume", topic, "-p", str(partition_for(b"user-7", partitions)), "--from-beginning", "-e",
              "--format", "%k=%v@%p", *b)
    assert "user-7=hello@" in text and "user-7=world@" in text
    assert len(ok("consume", topic, "-p", "1", "--offset", "-5", "-e", *b).splitlines()) == 5
    assert ok("consume", topic, "--from-beginning", "--max-messages", "4", *b).count("\n") == 4

    # a group: the first read commits, the second finds nothing new, then only what came after
    group = f"{topic}-readers"
    first = ok("consume", topic, "--group", group, "--from-beginning", "-e", "--format", "%o", *b)
    assert len(first.splitlines()) == len(records)
    assert ok("consume", topic, "--group", group, "-e", *b) == ""
    ok("produce", topic, "--value", "later", *b)
    assert ok("consume", topic, "--group", group, "-e", *b) == "later\n"


def test_topic_verbs_on_the_dev_cluster(dev: str) -> None:
    b = ("--bootstrap", dev)
    created = ok_json("topics", "create", "orders", "audit", "-p", "3", "-r", "3", "-c", "retention.ms=3600000", *b)
    assert [(t["topic"], t["result"], t["partitions"]) for t in created] == [
        ("orders", "created", 3), ("audit", "created", 3)]
    again = tidelog("topics", "create", "orders", *b)  # a real process: one line, exit 1
    assert "TOPIC_ALREADY_EXISTS" in again.stdout
    one_error_line(again, 1, "tidelog topics")
    assert ok_json("topics", "create", "orders", "--if-not-exists", *b)[0]["result"] == "exists"

    listed = {t["topic"]: t for t in ok_json("topics", "list", *b)}
    assert {"orders", "audit"} <= set(listed) and "__consumer_offsets" not in listed
    assert listed["orders"]["partitions"] == 3
    assert "__consumer_offsets" in {t["topic"] for t in ok_json("topics", "list", "--internal", *b)}
    table = ok("topics", "list", *b).splitlines()
    assert table[0].split() == ["TOPIC", "PARTITIONS", "REPLICATION-FACTOR", "TOPIC-ID"]
    assert len({line.index("PARTITIONS") for line in table[:1]}) == 1  # aligned columns (header sets them)

    [orders] = ok_json("topics", "describe", "orders", *b)
    assert orders["partitions"] == 3 and len(orders["partition_details"]) == 3
    assert {p["leader"] for p in orders["partition_details"]} <= {1, 2}
    assert [(c["name"], c["value"], c["source"]) for c in orders["configs"]] == [
        ("retention.ms", "3600000", "DYNAMIC_TOPIC_CONFIG")]

    altered = ok_json("topics", "alter", "orders", "--partitions", "5", "-c", "max.message.bytes=200000",
                      "--delete-config", "retention.ms", *b)
    assert all(c["result"] == "done" for c in altered["changes"])
    [orders] = ok_json("topics", "describe", "orders", "--all-configs", *b)
    configs = {c["name"]: c for c in orders["configs"]}
    assert orders["partitions"] == 5
    assert (configs["max.message.bytes"]["value"], configs["max.message.bytes"]["source"]) == (
        "200000", "DYNAMIC_TOPIC_CONFIG")
    assert configs["retention.ms"]["source"] == "DEFAULT_CONFIG"
    refused = cli("topics", "alter", "orders", "-c", "max.message.bytes=lots", *b)
    assert "INVALID_CONFIG" in refused.stdout
    one_error_line(refused, 1, "tidelog topics")

    roundtrip(dev, "orders", partitions=5)

    deleted = ok_json("topics", "delete", "audit", *b)
    assert deleted == [{"topic": "audit", "result": "deleted", "error": None}]
    assert "audit" not in {t["topic"] for t in ok_json("topics", "list", *b)}
    gone = cli("topics", "describe", "audit", *b)
    assert "UNKNOWN_TOPIC_OR_PARTITION" in one_error_line(gone, 1, "tidelog topics")
    assert ok_json("topics", "delete", "audit", "--if-exists", *b)[0]["result"] == "absent"


def test_the_same_commands_on_librdkafka_mock_cluster(mock: str) -> None:
    b = ("--bootstrap", mock)
    listed = ok_json("topics", "list", *b)
    assert [(t["topic"], t["partitions"], t["replication_factor"]) for t in listed] == [
        (BAR_TOPIC, 1, 1), (MOCK_TOPIC, 4, 3)]
    done = cli("topics", "describe", MOCK_TOPIC, "--json", *b)
    assert done.returncode == 0, done.stderr
    [pre] = json.loads(done.stdout)
    assert pre["configs"] is None and "DescribeConfigs" in done.stderr  # the mock has no DescribeConfigs
    assert sorted(len(p["replicas"]) for p in pre["partition_details"]) == [3, 3, 3, 3]
    for verb in (("create", "new"), ("delete", MOCK_TOPIC), ("alter", MOCK_TOPIC, "--partitions", "8")):
        line = one_error_line(cli("topics", *verb, *b), 1, "tidelog topics")
        assert "does not support" in line, line

    roundtrip(mock, MOCK_TOPIC, partitions=4)


def test_confluent_kafka_reads_what_tidelog_produce_wrote(dev: str) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    b = ("--bootstrap", dev)
    ok("topics", "create", "mixed", "-p", "4", *b)
    keys = [f"k{i}" for i in range(20)]
    ok("produce", "mixed", "-K", "=", *b, stdin="".join(f"{k}={k}-value\n" for k in keys))
    consumer = confluent_kafka.Consumer({"bootstrap.servers": dev, "group.id": f"cli-{os.getpid()}",
                                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        consumer.subscribe(["mixed"])
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while len(seen) < len(keys) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                seen[msg.key().decode()] = msg.partition()
                assert msg.value() == f"{msg.key().decode()}-value".encode()
    finally:
        consumer.close()
    assert seen == {k: partition_for(k.encode(), 4) for k in keys}


def test_partitions_move_several_at_once(dev: str) -> None:
    b = ("--bootstrap", dev)
    ok("topics", "create", "moving", "-p", "4", *b)
    moved = ok_json("partitions", "move", "moving:0", "moving:1", "moving:2", "moving:3", "--to", "2", *b)
    assert [(m["partition"], m["to"]) for m in moved] == [(0, 2), (1, 2), (2, 2), (3, 2)]
    # each was seen led by broker 2 (the controller may spread them out again later: it balances a pin-free topic)
    assert all(m["epoch"] >= m["epoch_before"] and m["seconds"] >= 0 for m in moved)
    assert all(m["epoch"] > m["epoch_before"] for m in moved if m["from"] != 2)
    one = ok_json("partitions", "move", "moving:0", "--to", "1", *b)
    assert isinstance(one, dict) and (one["partition"], one["to"]) == (0, 1)  # one partition: one object, as before


def test_bulk_produce_draws_a_progress_bar_only_on_a_terminal(mock: str) -> None:
    argv = [sys.executable, "-m", "brokers.cli", "produce", BAR_TOPIC, "--count", "20000", "--size", "10",
            "--bootstrap", mock]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert f"\rproduce {BAR_TOPIC} [" in text and "20000/20000 100%" in text, text
    piped = tidelog("produce", BAR_TOPIC, "--count", "100", "--bootstrap", mock)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "[" not in piped.stderr, piped.stderr
