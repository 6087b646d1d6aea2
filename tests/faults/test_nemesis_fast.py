"""Issue 11, must-show 4 (fast part): a 2-minute seeded nemesis run mixing every fault type over a 3-broker,
3-bookie cluster with a 3-member etcd, under the verify workload; then heal, final read, zero anomalies.

It is also the fast suite's stand-in for the fault tests that run only in the slow suite (test_failover.py,
test_storage_faults.py): after every fault acknowledgements came again, the failover was logged with the topic's
name, and during the pause every broker's Metadata named another leader for the paused broker's partitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from brokers.verify.history import read_history
from brokers.verify.nemesis import FAULT_TYPES, NemesisRun, mount_small_disks, unmount
from tests.faults.harness import needs_etcd, pauses_not_redirected, run_and_check

pytestmark = [pytest.mark.faults, needs_etcd]


def test_nemesis_two_minutes_every_fault(tmp_path: Path) -> None:
    spec = NemesisRun(directory=str(tmp_path / "c"), duration=90.0, seed=11, etcd_members=3, gap=(2.0, 4.0),
                      hold=(2.0, 4.0))  # fmt: skip
    summary = run_and_check(spec)
    injected = summary["nemesis"]["faults"]
    expected = set(FAULT_TYPES) if _can_mount(tmp_path) else set(FAULT_TYPES) - {"disk"}  # the disk fault needs root
    assert set(injected) == expected, injected  # a seeded shuffle: one of each before any repeats
    assert summary["nemesis"]["no-ack-after"] == {}
    logs = "".join(p.read_text(errors="replace") for p in sorted((tmp_path / "c").glob("broker-*.log")))
    assert f"failover: took {summary['topic']}/" in logs
    assert pauses_not_redirected(read_history(tmp_path / "c" / "history.jsonl")) == []


def _can_mount(tmp_path: Path) -> bool:
    try:
        unmount(mount_small_disks([tmp_path / "probe"]))
    except OSError:
        return False
    return True
