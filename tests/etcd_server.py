"""Run a real single-node etcd for tests: free 127.0.0.1 ports, data in a temp dir, stopped at the end.

with EtcdServer() as etcd:          # or: etcd = EtcdServer(); etcd.start(); ...; etcd.stop()
    store = await EtcdMetadataStore.connect(etcd.url)
    etcd.restart()                  # same ports and data: clients must reconnect and resume
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

ETCD_BINARY = os.environ.get("TIDELOG_ETCD", "etcd")


def etcd_available() -> bool:
    """Whether an etcd binary can be found (tests needing etcd skip otherwise)."""
    return shutil.which(ETCD_BINARY) is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """One etcd process. ``url`` is ``etcd://127.0.0.1:<port>``; restart keeps ports and data."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *, start_timeout: float = 20.0) -> None:
        self._owns_dir = data_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="tidelog-etcd-") if data_dir is None else data_dir)
        self.start_timeout = start_timeout
        self.client_port = 0
        self.peer_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> EtcdServer:
        """Start etcd (on new free ports the first time) and wait until it answers /health."""
        if self.process is not None:
            raise RuntimeError("etcd is already running")
        first = self.client_port == 0
        for _attempt in range(5):
            if first:
                self.client_port, self.peer_port = free_port(), free_port()
            self._spawn()
            if self._wait_healthy():
                return self
            self._terminate(signal.SIGKILL)
            if not first:
                break  # restart must keep its ports; do not hop
        raise RuntimeError(f"etcd did not become healthy; see {self.base_dir / 'etcd.log'}")

    def stop(self) -> None:
        """Stop etcd gracefully (SIGTERM, then SIGKILL)."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Kill etcd at once (SIGKILL), as a crash would."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop etcd and remove its data directory (if this object created it)."""
        self.kill()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # --- internals --------------------------------------------------------------------------------
    def _spawn(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            ETCD_BINARY,
            "--name", "tidelog-test",
            "--data-dir", str(self.base_dir / "data"),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"tidelog-test={peer}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", str(self.base_dir / "etcd.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False  # exited: most likely a port taken in the meantime
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=1)
                try:
                    conn.request("GET", "/health")
                    if b'"true"' in conn.getresponse().read():
                        return True
                finally:
                    conn.close()
            time.sleep(0.05)
        return False

    def _terminate(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
