"""``tidelog verify`` end to end: the workload against a real embedded broker and a real dev cluster (one
broker killed -9 midway) finds no anomaly, and ``tidelog verify check`` reads the history it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from brokers.devcluster import DevCluster
from brokers.verify.workload import ensure_topic

from .broker_process import BrokerProcess

SESSION_TIMEOUT_MS = 3000
RUN_TIMEOUT = 240.0  # hang guard only


def verify(*args: str, timeout: float = RUN_TIMEOUT) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run(
        [sys.executable, "-m", "brokers.cli", "--log-level", "WARNING", "verify", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return r.returncode, json.loads(r.stdout), r.stderr


def assert_valid(code: int, summary: dict[str, Any], stderr: str) -> None:
    assert summary["anomalies"] == {}, json.dumps(summary, indent=2)
    assert summary["valid?"] is True
    assert code == 0, stderr[-3000:]
    stats = summary["stats"]
    assert stats["acknowledged"] > 0
    assert stats["acknowledged-unseen"] == 0, stats  # the final read saw every acknowledged value
    assert stats["values-read"] >= stats["acknowledged"]
    assert stats["ops"]["commit"].get("ok", 0) > 0


def test_verify_run_against_the_embedded_broker(broker: BrokerProcess, tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    code, summary, err = verify("run", "--bootstrap", broker.bootstrap, "--duration", "10", "--history", str(history))
    assert_valid(code, summary, err)
    print(f"\nembedded broker, 10 s: {summary['operations']} operations, {summary['stats']}")

    code, again, err = verify("check", str(history))
    assert code == 0, err
    assert again["operations"] == summary["operations"]
    assert again["anomaly-counts"] == summary["anomaly-counts"]

    # The same history with one acknowledged value dropped from every read is a lost write, exit 1.
    lines = history.read_text().splitlines()
    acked = next(json.loads(x) for x in lines if '"type":"ok","f":"send"' in x)
    doctored = []
    for line in lines:
        e = json.loads(line)
        if "records" in e:
            e["records"] = [r for r in e["records"] if r[2] != acked["value"]]
        doctored.append(json.dumps(e))
    bad = tmp_path / "doctored.jsonl"
    bad.write_text("\n".join(doctored) + "\n")
    code, lost, _ = verify("check", str(bad))
    assert code == 1
    # A consumer that polled across the dropped record now seems to jump over its (acknowledged, so known)
    # offset: a poll-skip beside the lost write is the checker being right about the doctored history.
    assert "lost-write" in lost["anomalies"]
    assert set(lost["anomalies"]) <= {"lost-write", "poll-skip"}, lost["anomalies"]
    for skip in lost["anomalies"].get("poll-skip", {}).get("examples", []):
        assert skip["first_skipped"] == acked["offset"], skip
    assert lost["anomalies"]["lost-write"]["examples"][0]["value"] == acked["value"]


def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    t = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10).topics[topic]
    return int(t.partitions[partition].leader)


def run_on_cluster(tmp_path: Path, duration: float, kill_after: float | None) -> dict[str, Any]:
    """``tidelog verify run`` against a 3-broker dev cluster; optionally kill -9 the leader of partition 0
    ``kill_after`` seconds into the load."""
    topic = f"verify-{uuid.uuid4().hex[:8]}"
    history = tmp_path / "history.jsonl"
    args = ["--config", f"broker.session.timeout.ms={SESSION_TIMEOUT_MS}"]
    with DevCluster(tmp_path / "cluster", brokers=3, bookies=3, broker_args=args) as cluster:
        ensure_topic(cluster.bootstrap, topic, 3)  # before anything asks Metadata for it, which may auto-create
        cmd = [sys.executable, "-m", "brokers.cli", "--log-level", "WARNING", "verify", "run",
               "--bootstrap", cluster.bootstrap, "--topic", topic, "--duration", str(duration),
               "--history", str(history)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if kill_after is not None:
                victim = leader_of(cluster.bootstrap, topic, 0)
                time.sleep(kill_after)
                cluster.broker(victim).kill9()
                print(f"\nkilled broker {victim} (leader of {topic}/0) {kill_after} s into the load")
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for b in cluster.brokers:
            log = b.log_tail(10_000_000)
            assert "Traceback" not in log, f"{b.name} logged a traceback: {b.log_path}"
    assert out.strip(), f"tidelog verify run printed nothing (exit {proc.returncode}):\n{err[-5000:]}"
    summary: dict[str, Any] = json.loads(out)
    assert_valid(proc.returncode, summary, err)
    print(f"cluster, {duration} s: {summary['operations']} operations, {summary['stats']}")
    return summary


@pytest.mark.slow  # make test: tests/faults/test_nemesis_fast.py runs the workload against a dev cluster
def test_verify_run_against_a_dev_cluster(tmp_path: Path) -> None:
    run_on_cluster(tmp_path, duration=5, kill_after=None)


@pytest.mark.slow  # the fast suite kills owners in tests/faults/test_failover.py
def test_verify_run_with_a_broker_killed(tmp_path: Path) -> None:
    run_on_cluster(tmp_path, duration=20, kill_after=8)
