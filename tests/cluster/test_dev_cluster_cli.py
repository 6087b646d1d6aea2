"""``tidelog dev-cluster`` as a developer runs it (issue 10, must-show 1 names the command): it prints the
bootstrap string once three brokers serve, kcat sees all three brokers through each of them and writes and reads
through different ones, and Ctrl-C (SIGINT) stops everything it started and exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from brokers.devcluster import tidelog_command
from tests.etcd_server import etcd_available

pytestmark = [
    pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)"),
    pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed"),
]

START_GUARD_S = 120.0
STOP_GUARD_S = 60.0


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie until its parent reaps it counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _kcat(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kcat", *args, "-m", "30"], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_dev_cluster_command_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out_path = tmp_path / "dev-cluster.out"
    cluster_dir = tmp_path / "dc"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [*tidelog_command(), "dev-cluster", "--brokers", "3", "--bookies", "3", "--dir", str(cluster_dir)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_GUARD_S
        bootstrap = ""
        while not bootstrap and time.monotonic() < deadline and proc.poll() is None:
            for line in out_path.read_text(errors="replace").splitlines():
                if line.startswith("bootstrap: "):
                    bootstrap = line.removeprefix("bootstrap: ").strip()
            time.sleep(0.2)
        assert bootstrap, f"no bootstrap line (exit {proc.poll()}):\n{out_path.read_text(errors='replace')[-3000:]}"
        described = json.loads((cluster_dir / "cluster.json").read_text())
        addresses = [b["address"] for b in described["brokers"]]
        assert bootstrap == ",".join(addresses) and len(addresses) == 3
        print(f"\ntidelog dev-cluster printed: bootstrap: {bootstrap}")

        for address in addresses:
            listing = _kcat("-b", address, "-L")
            assert " 3 brokers:" in listing, listing
        _kcat("-b", addresses[0], "-P", "-t", "devcli", "-p", "0", stdin="".join(f"line-{i}\n" for i in range(50)))
        # the topic is created on first use (auto-create); written through broker 1, read through broker 3
        read = _kcat("-b", addresses[2], "-C", "-t", "devcli", "-p", "0", "-o", "beginning", "-e", "-q")
        assert read.splitlines() == [f"line-{i}" for i in range(50)]

        pids = [b["pid"] for b in described["brokers"]] + [b["pid"] for b in described["bookies"]]
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(STOP_GUARD_S)
        text = out_path.read_text(errors="replace")
        assert code == 0, text[-3000:]
        assert "stopping" in text
        assert all(_gone(pid) for pid in pids), [p for p in pids if not _gone(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
