"""Run the real ``tidelog run`` console script as a subprocess for the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT = 60.0  # hang guard only: the broker normally listens within a second
STOP_TIMEOUT = 30.0


class BrokerError(RuntimeError):
    pass


def tidelog_command() -> list[str]:
    """The ``tidelog`` console script next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "tidelog"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("tidelog")
    if found:
        return [found]
    raise BrokerError(
        f"no `tidelog` console script beside {sys.executable} or on PATH; "
        "install the project (`make venv`, i.e. pip install -e '.[test]')"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class BrokerProcess:
    """One embedded Tidelog broker process on 127.0.0.1 with its own data directory.

    The port is chosen once and kept across restarts, so clients that were connected before a
    ``kill9()`` / ``restart()`` reconnect to the same address, as they would to a real broker.
    """

    def __init__(
        self,
        data_dir: Path,
        configs: dict[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.configs = dict(configs or {})
        self.port = port or free_port()
        self.log_path = log_path or self.data_dir.parent / f"tidelog-{self.port}.log"
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exit_codes: list[int] = []

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [
            *tidelog_command(),
            "run",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.bootstrap,
            "--node-id",
            "0",
        ]
        for k, v in self.configs.items():
            cmd += ["--config", f"{k}={v}"]
        return cmd + self.extra_args

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = START_TIMEOUT) -> BrokerProcess:
        if self.running:
            raise BrokerError("broker already running")
        cmd = self.command()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self.exit_codes.append(code)
                raise BrokerError(
                    f"tidelog exited with code {code} before listening on {self.bootstrap}\n"
                    f"command: {' '.join(cmd)}\n--- broker output (tail) ---\n{self.log_tail()}"
                )
            if port_accepts(self.port):
                return self
            if time.monotonic() > deadline:
                self.kill9()
                raise BrokerError(
                    f"tidelog did not accept TCP on {self.bootstrap} within {timeout}s\n"
                    f"command: {' '.join(cmd)}\n--- broker output (tail) ---\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; escalates to SIGKILL (and raises) if the broker does not exit in time."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                self.exit_codes.append(proc.returncode)
                self.proc = None
                raise BrokerError(
                    f"tidelog did not exit within {timeout}s of SIGTERM (killed)\n{self.log_tail()}"
                ) from None
        self.exit_codes.append(proc.returncode)
        self.proc = None
        return proc.returncode

    def kill9(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.exit_codes.append(self.proc.returncode)
        self.proc = None

    def restart(self, *, kill: bool = False, timeout: float = START_TIMEOUT) -> BrokerProcess:
        """Stop (SIGTERM, or SIGKILL with ``kill=True``) and start again on the same data dir and port."""
        if kill:
            self.kill9()
        else:
            self.stop()
        # The same port again: clients reconnect to the address they know.
        return self.start(timeout)

    def close(self) -> None:
        """Teardown: stop quietly whatever the state."""
        with contextlib.suppress(BrokerError):
            self.stop()
        self.kill9()

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
