"""Issue 11, "bookie loss, object store loss and a broker's disk filling behave as in embedded mode", in the
cluster, under the verify workload (idempotent acks=all producers, group and assign consumers, final read):

* ``store``: the S3 server unreachable (its proxy stalls or resets every connection) for a few seconds while
  ledgers roll every 10 s and are offloaded: produce goes on (the bookies hold the data), offloads retry;
* ``disk``: a bookie's data directory (a 256 MiB tmpfs) filled up for a few seconds: the bookie
  refuses adds it cannot journal, the brokers write around it or answer retriably, and it serves again once
  space is back — without a restart;
* ``bookie``: kill -9 of a bookie, restarted after the hold (the nemesis suites cover it too).

Each: no anomaly, and acknowledged writes again after every fault. The disk test is skipped where mounting a
tmpfs is not permitted (it needs root).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from brokers.verify.nemesis import NemesisRun, mount_small_disks, unmount
from tests.faults.harness import needs_etcd, run_and_check

pytestmark = [pytest.mark.faults, pytest.mark.slow, needs_etcd]  # make test: the fast nemesis run has these faults
TTL_MS = 3000


def _run(tmp_path: Path, schedule: tuple[str, ...], seed: int) -> dict[str, object]:
    spec = NemesisRun(directory=str(tmp_path / "c"), duration=40.0 + 15.0 * len(schedule), seed=seed,
                      schedule=schedule, session_timeout_ms=TTL_MS, gap=(3.0, 4.0), hold=(3.0, 5.0))  # fmt: skip
    summary = run_and_check(spec)
    nem = summary["nemesis"]
    kinds = sorted(set(schedule))
    print(f"{schedule}: first ack after {nem['first-ack-s']}, longest gap {nem['longest-gap-s']}")
    assert nem["faults"] == {k: schedule.count(k) for k in kinds}
    assert nem["no-ack-after"] == {}
    return summary


def test_object_store_and_bookie_loss(tmp_path: Path) -> None:
    _run(tmp_path, ("store", "bookie", "store"), seed=7)
    logs = "".join(p.read_text(errors="replace") for p in sorted((tmp_path / "c").glob("broker-*.log")))
    assert "Traceback" not in logs
    assert "offloaded ledger" in logs  # the tier was in use: sealed ledgers reached the store between outages


def test_bookie_disk_full(tmp_path: Path) -> None:
    try:
        unmount(mount_small_disks([tmp_path / "probe"]))
    except OSError as e:
        pytest.skip(str(e))
    _run(tmp_path, ("disk", "disk"), seed=8)
    bookie_logs = "".join(p.read_text(errors="replace") for p in sorted((tmp_path / "c").glob("bookie-*.log")))
    assert "Traceback" not in bookie_logs
    # The fault bit (a journal write failed for want of space) and the bookie took writes again by itself.
    assert bookie_logs.count("No space left on device; refusing writes") >= 1
    assert bookie_logs.count("the disk takes writes again") == bookie_logs.count("refusing writes until")
