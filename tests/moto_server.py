"""A real moto S3 server in a subprocess on a free 127.0.0.1 port, for tests that need S3 over HTTP.

    with MotoServer() as moto:
        moto.create_bucket("tidelog-test")
        url = moto.s3_url("tidelog-test", "some/prefix")

moto does not verify signatures, so any credentials work; :data:`ACCESS_KEY_ID` and
:data:`SECRET_ACCESS_KEY` are what :meth:`MotoServer.s3_url` puts in the URL. It does apply object ACLs
to requests without an ``Authorization`` header (403), so the helper's raw requests carry a dummy one.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = ["ACCESS_KEY_ID", "REGION", "SECRET_ACCESS_KEY", "MotoServer", "free_port"]

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"  # noqa: S105 - moto accepts any credentials
_DUMMY_AUTH = {
    "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20250101/{REGION}/s3/aws4_request, "
    "SignedHeaders=host, Signature=00"
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """Starts ``python -m moto.server`` on a free port and stops it; usable as a context manager."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0
        self._log: Path | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (0 before start)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:40123``."""
        if self._proc is None:
            raise RuntimeError("moto server is not running")
        return f"http://{HOST}:{self._port}"

    def start(self) -> None:
        """Launch the server and wait until it answers HTTP (a few tries if the port gets taken)."""
        if self._proc is not None:
            return
        errors: list[str] = []
        for _attempt in range(3):
            self._port = free_port()
            fd, log_name = tempfile.mkstemp(prefix="moto-", suffix=".log")
            self._log = Path(log_name)
            with open(fd, "wb") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self._port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            errors.append(self._log.read_text(errors="replace")[-2000:])
            self.stop()
        raise RuntimeError("moto server did not start:\n" + "\n---\n".join(errors))

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 5 s) and remove its log."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` with a raw ``PUT /bucket`` (moto accepts unsigned requests)."""
        status, body = self._request("PUT", f"/{quote(bucket)}")
        if status != 200:
            raise RuntimeError(f"create bucket {bucket!r}: HTTP {status}: {body[:500]!r}")

    def head_object(self, bucket: str, key: str) -> dict[str, str] | None:
        """The response headers of ``HEAD /bucket/key`` (lower-case names), or None on 404."""
        conn = http.client.HTTPConnection(HOST, self._port, timeout=10)
        try:
            conn.request("HEAD", f"/{quote(bucket)}/{quote(key)}", headers=_DUMMY_AUTH)
            response = conn.getresponse()
            response.read()
            if response.status == 404:
                return None
            if response.status != 200:
                raise RuntimeError(f"HEAD {bucket}/{key}: HTTP {response.status}")
            return {name.lower(): value for name, value in response.getheaders()}
        finally:
            conn.close()

    def s3_url(self, bucket: str, prefix: str = "", **params: str) -> str:
        """An ``s3://`` URL for :func:`storage.objectstore.open_object_store` pointing at this server."""
        query = {
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            **params,
        }
        path = f"/{prefix.strip('/')}" if prefix.strip("/") else ""
        return f"s3://{bucket}{path}?" + "&".join(f"{k}={quote(v, safe=':/')}" for k, v in query.items())

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                status, _ = self._request("GET", "/")
            except OSError:
                time.sleep(0.05)
                continue
            if status == 200:
                return True
            time.sleep(0.05)
        return False

    def _request(self, method: str, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self._port, timeout=10)
        try:
            conn.request(method, path, headers=_DUMMY_AUTH)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
