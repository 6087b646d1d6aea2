"""Shared benchmark plumbing: start an embedded ``tidelog run`` on 127.0.0.1, machine facts, figures."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tidelog_command() -> list[str]:
    beside = Path(sys.executable).parent / "tidelog"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("tidelog")
    if found:
        return [found]
    raise SystemExit("no `tidelog` console script found; run `make venv` first")


def process_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds process ``pid`` has used so far (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_mib(pid: int, field: str = "VmRSS") -> float:
    """One memory line of /proc/PID/status (VmRSS, VmHWM, ...), MiB; NaN once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


class EmbeddedBroker:
    """``tidelog run`` as a subprocess; output goes to ``<data_dir>/../tidelog-bench.log``."""

    def __init__(
        self,
        data_dir: Path,
        configs: dict[str, str] | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.configs = configs or {}
        self.extra_args = extra_args or []
        self.log_path = data_dir.parent / "tidelog-bench.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> EmbeddedBroker:
        cmd = [*tidelog_command(), "run", "--data-dir", str(self.data_dir), "--listen", self.bootstrap]
        cmd += self.extra_args
        for k, v in self.configs.items():
            cmd += ["--config", f"{k}={v}"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"tidelog exited ({self.proc.returncode}):\n{self.log_path.read_text()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"tidelog did not listen within {timeout}s")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """user+system CPU seconds the broker process has used so far (Linux /proc)."""
        return 0.0 if self.proc is None else process_cpu_seconds(self.proc.pid)

    def peak_rss_mb(self) -> float:
        """The broker process's peak resident memory so far (VmHWM), MiB."""
        return float("nan") if self.proc is None else process_memory_mib(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


MOCK_SCRIPT = Path(os.environ.get("TIDELOG_MOCKCLUSTER", "/work/shared/tools/mockcluster.py"))
"""librdkafka's mock cluster (the C in-memory broker inside confluent-kafka's wheel), run as a subprocess."""


class MockCluster:
    """librdkafka's mock cluster (one broker) as a subprocess with the bench topic pre-created (it has no
    CreateTopics of its own); the same ``cpu_seconds`` as EmbeddedBroker. Also a context manager."""

    def __init__(self, script: Path, topic: str, partitions: int) -> None:
        self.script = script
        self.topic = topic
        self.partitions = partitions
        self.proc: subprocess.Popen[str] | None = None
        self.bootstrap = ""

    def start(self, timeout: float = 30.0) -> MockCluster:
        if not self.script.exists():
            raise FileNotFoundError(self.script)
        cmd = [sys.executable, str(self.script), "--topic", f"{self.topic}:{self.partitions}:1", "--timeout", "7200"]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("bootstrap.servers="):
                self.bootstrap = line.split("=", 1)[1].strip().split(",")[0]
                return self
        self.stop()
        raise SystemExit(f"{self.script} did not print bootstrap.servers")

    def cpu_seconds(self) -> float:
        return 0.0 if self.proc is None else process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> MockCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def table(rows: list[tuple[str, str]], title: str) -> str:
    w = max(len(r[0]) for r in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{name.ljust(w)}  {value}" for name, value in rows]
    return "\n".join(lines)
