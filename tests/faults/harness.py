"""Shared by the fault tests: run a nemesis spec, print its summary, and assert it is valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from brokers.verify.history import INVOKE, LEADER, NEMESIS, OK, Event
from brokers.verify.nemesis import NemesisRun, run_nemesis
from tests.etcd_server import etcd_available

needs_etcd = pytest.mark.skipif(not etcd_available(), reason="etcd not installed")


def run_and_check(spec: NemesisRun) -> dict[str, Any]:
    """Run, print the summary (the figures the docs quote), and fail on any anomaly or unfinished run."""
    summary = run_nemesis(spec)
    brief = {k: summary.get(k) for k in ("valid?", "operations", "anomaly-counts", "nemesis", "workload-errors",
                                          "nemesis-errors", "seed")}  # fmt: skip
    brief["acknowledged"] = summary["stats"]["acknowledged"]
    brief["indeterminate"] = summary["stats"]["indeterminate"]
    print(json.dumps(brief, indent=1, sort_keys=True))
    if not summary["valid?"] or summary.get("workload-errors"):
        logs = sorted(Path(spec.directory).glob("*.log"))
        print("logs:", [str(p) for p in logs])
        print(json.dumps(summary.get("anomalies"), indent=1)[:4000])
    assert summary.get("workload-errors") is None, summary.get("workload-errors")
    assert summary["valid?"], summary["anomaly-counts"]
    assert summary["stats"]["acknowledged"] > 0
    return summary


def pauses_not_redirected(events: list[Event]) -> list[str]:
    """Pauses during which no broker named another leader for a partition the paused broker led."""
    problems = []
    pauses = [e for e in events if e.f == NEMESIS and e.type == INVOKE and (e.fault or "").startswith("pause")]
    for p in pauses:
        if not p.partitions:
            continue
        end = next(e.time for e in events if e.f == NEMESIS and e.type == OK and e.process == p.process)
        moved = {e.partition for e in events if e.f == LEADER and e.type == OK and p.time <= e.time <= end + 2
                 and e.partition in p.partitions and e.node != p.node}  # fmt: skip
        if moved != set(p.partitions):
            problems.append(f"{p.fault} at {p.time:.1f}s: partitions {sorted(set(p.partitions) - moved)} not moved")
    return problems
