"""Run real ``tidelog bookie`` server processes on 127.0.0.1 for integration and fault tests.

    bookie = BookieProcess(tmp_path / "b1", bookie_id="b1")      # metadata="none" unless given a URL
    bookie.start()                                             # waits for "bookie b1 listening on ..."
    client = TcpBookieClient(bookie.bookie_id, "127.0.0.1", bookie.port)
    bookie.kill9(); bookie.start()                             # a crash and a restart on the same port
    bookie.stop()                                              # SIGTERM: clean shutdown, exit code 0

The port is chosen once and kept across restarts, so transports reconnect to the same address.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.broker_process import free_port, tidelog_command

START_TIMEOUT = 60.0  # hang guard only: a bookie normally listens within a second
STOP_TIMEOUT = 30.0


class BookieProcessError(RuntimeError):
    pass


class BookieProcess:
    """One ``tidelog bookie`` process with its own data directory and a fixed port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        bookie_id: str,
        metadata: str = "none",
        cluster: str = "tidelog",
        port: int | None = None,
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.bookie_id = bookie_id
        self.metadata = metadata
        self.cluster = cluster
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self.log_path = log_path or self.data_dir.parent / f"bookie-{bookie_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self.starts = 0

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            *tidelog_command(), "bookie",
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--bookie-id", self.bookie_id,
            "--metadata", self.metadata,
            "--cluster", self.cluster,
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start and wait for the "listening" line; returns the seconds that took (start-up time)."""
        if self.running:
            raise BookieProcessError(f"bookie {self.bookie_id} is already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.starts += 1
        line = self._read_line(timeout)
        expected = f"bookie {self.bookie_id} listening on 127.0.0.1:{self.port}"
        if line.strip() != expected:
            self.kill9()
            raise BookieProcessError(f"bookie said {line!r}, expected {expected!r}; see {self.log_path}")
        return time.monotonic() - started

    def _read_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill9()
                raise BookieProcessError(f"bookie {self.bookie_id} did not start in {timeout}s; see {self.log_path}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(timeout=STOP_TIMEOUT)
                    self.exit_codes.append(code)
                    self.proc = None
                    raise BookieProcessError(f"bookie {self.bookie_id} exited with {code}; see {self.log_path}")
                buf += chunk
        return buf.decode(errors="replace").split("\n", 1)[0]

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; returns the exit code (0 on a clean shutdown)."""
        return self._end(signal.SIGTERM, timeout)

    def kill9(self) -> int:
        """SIGKILL, as a crash would; returns the exit code (-9)."""
        return self._end(signal.SIGKILL, STOP_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its sockets open."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Teardown: stop whatever the state (SIGTERM, escalating to SIGKILL)."""
        self.stop()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def _end(self, sig: signal.Signals, timeout: float) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return self.exit_codes[-1] if self.exit_codes else 0
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        code = proc.returncode
        self.exit_codes.append(code)
        return code
