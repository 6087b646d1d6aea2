"""Issue 11, must-show 4: a 30-minute seeded nemesis run mixing every fault with moves: zero anomalies.
The printed summary is the one docs/reliability.md quotes."""

from __future__ import annotations

from pathlib import Path

import pytest

from brokers.verify.nemesis import NemesisRun
from tests.faults.harness import needs_etcd, run_and_check

pytestmark = [pytest.mark.faults, pytest.mark.slow, needs_etcd, pytest.mark.timeout(3000)]


@pytest.mark.parametrize("etcd_members", [3])
def test_nemesis_thirty_minutes(tmp_path: Path, etcd_members: int) -> None:
    run_and_check(NemesisRun(directory=str(tmp_path / "c"), duration=1800.0, seed=30, etcd_members=etcd_members))
