"""A whole Tidelog cluster as local processes, for development and tests (``tidelog dev-cluster``).

One etcd (Debian's ``etcd`` binary), one moto S3 server (``moto_server`` next to the running Python) with a
bucket, N bookies (``tidelog bookie --metadata etcd://...``) and M brokers (``tidelog broker --metadata ...
--object-store s3://...``), each with one log file under the cluster directory, on free 127.0.0.1 ports
chosen at start. Every child dies with this process (PR_SET_PDEATHSIG, as brokers/local_bookies.py does),
so a crashed test or a killed ``tidelog dev-cluster`` leaves nothing running. ``stop()`` ends brokers
first (SIGTERM: they release partitions and deregister), then bookies, moto and etcd.

    with DevCluster(tmp_path, brokers=3, bookies=3) as cluster:     # start() returns the bootstrap string
        cluster.broker(1).kill9(); cluster.broker(1).restart()
        cluster.add_broker()

``start()`` returns once every broker accepts Kafka connections and Metadata from each lists all brokers.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

HOST = "127.0.0.1"
BUCKET = "tidelog"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"  # noqa: S105 - moto accepts any credentials
REGION = "us-east-1"
STOP_GRACE = 15.0
START_TIMEOUT = 60.0
REGISTERED_ELSEWHERE = "is registered by another live broker"
"""What ``tidelog broker`` says when its node id's previous registration has not expired yet."""
_DUMMY_AUTH = {
    "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20250101/{REGION}/s3/aws4_request, "
    "SignedHeaders=host, Signature=00"
}


class DevClusterError(RuntimeError):
    """A part of the dev cluster did not start (the message names it and its log file)."""


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setpgrp()  # a Ctrl-C in the terminal reaches only us; we stop the children in order


_SPAWNER: ThreadPoolExecutor | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawn(popen: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Popen on the main thread, or else on one long-lived thread: PR_SET_PDEATHSIG fires when the *thread*
    that forked the child ends, so a child restarted from a short-lived thread (a nemesis) would die with it."""
    global _SPAWNER
    if threading.current_thread() is threading.main_thread():
        return popen()
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devcluster-spawn")
    return _SPAWNER.submit(popen).result()


class _PortAllocator:
    """Free ports, never the same one twice in one cluster (bound-and-closed ports may be handed out again)."""

    def __init__(self, base: int | None) -> None:
        self._next = base
        self._given: set[int] = set()

    def __call__(self) -> int:
        for _ in range(1000):
            if self._next is not None:
                port, self._next = self._next, self._next + 1
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((HOST, 0))
                    port = int(s.getsockname()[1])
            if port in self._given:
                continue
            if self._next is not None and not _port_free(port):
                continue
            self._given.add(port)
            return port
        raise DevClusterError("no free port found")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def tidelog_command() -> list[str]:
    """How to run ``tidelog`` with this interpreter (works from a source tree and an installed venv)."""
    return [sys.executable, "-m", "brokers.cli"]


@dataclass
class Proc:
    """One child process of the cluster: its command line, log file, and lifecycle operations."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_start: int = 0
    """Where in the log file the current run's output begins."""

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        if self.alive():
            raise DevClusterError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.log_start = log.tell()
            log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.args)}\n".encode())
            log.flush()
            self.popen = _spawn(lambda: subprocess.Popen(  # noqa: S603 - our own command lines
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, preexec_fn=_die_with_parent,
            ))  # fmt: skip

    def send_signal(self, sig: signal.Signals) -> None:
        popen = self.popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(sig)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code (None if it was not running)."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            popen.terminate()
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        return popen.returncode

    def kill9(self) -> None:
        """SIGKILL, as a crash or a pulled plug would."""
        popen = self.popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, it does nothing (a long GC pause, a VM freeze)."""
        self.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)

    def restart(self, grace: float = STOP_GRACE) -> None:
        self.stop(grace)
        self.start()

    def run_log(self) -> str:
        """The current run's output."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class BrokerProc(Proc):
    """A ``tidelog broker`` child."""

    node_id: int = 0
    port: int = 0
    admin_port: int = 0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def admin(self) -> str:
        return f"{HOST}:{self.admin_port}"


@dataclass
class EtcdProc(Proc):
    """One etcd member."""

    client_port: int = 0
    peer_port: int = 0


@dataclass
class BookieProc(Proc):
    """A ``tidelog bookie`` child."""

    bookie_id: str = ""
    port: int = 0
    admin_port: int = 0
    """Where the bookie serves Prometheus /metrics (``tidelog bookie --admin``)."""


class DevCluster:
    """etcd + moto S3 + bookies + brokers as local processes (see the module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        brokers: int = 3,
        bookies: int = 3,
        base_port: int | None = None,
        broker_args: Sequence[str] = (),
        cluster: str = "tidelog",
        etcd_binary: str | None = None,
        start_timeout: float = START_TIMEOUT,
        etcd_members: int = 1,
        proxied: bool = False,
        metadata: str = "etcd",
    ) -> None:
        # brokers=0 starts etcd, the object store and the bookies only; add_broker() adds brokers one by one
        # (bench/etcd_load.py measures the bookies' own etcd load that way before any broker exists).
        # etcd_members=3: three etcd processes in one cluster (brokers and bookies get every endpoint);
        # proxied=True: each bookie advertises a brokers.verify.proxy port in front of it, and the brokers reach the
        # S3 server through one too (the nemesis cuts them).
        # metadata="postgres": a local PostgreSQL (brokers/local_postgres.py) holds the metadata instead of etcd.
        if etcd_members < 1:
            raise DevClusterError("need at least one etcd member")
        if metadata not in ("etcd", "postgres"):
            raise DevClusterError(f"metadata store {metadata!r}: expected etcd or postgres")
        self.metadata_kind = metadata
        self.postgres: Any = None
        """A brokers.local_postgres.LocalPostgres when metadata="postgres"."""
        if brokers < 0 or bookies < 1:
            raise DevClusterError("need at least one bookie (and no negative number of brokers)")
        self.dir = Path(directory)
        self.n_brokers = brokers
        self.n_bookies = bookies
        self.cluster = cluster
        self.broker_args = list(broker_args)
        self.start_timeout = start_timeout
        self.etcd_binary = etcd_binary or os.environ.get("TIDELOG_ETCD", "etcd")
        self._port = _PortAllocator(base_port)
        self.etcd_port = 0
        self.moto_port = 0
        self.etcd: Proc | None = None
        self.n_etcd = etcd_members
        self.etcds: list[EtcdProc] = []
        self.proxied = proxied
        self.proxies: Any = None
        """A brokers.verify.proxy.ProxyRunner when proxied (every proxy below runs on it)."""
        self.bookie_proxies: list[Any] = []
        """When proxied: bookie_proxies[i-1] fronts bookie i (the nemesis cuts or delays it)."""
        self.store_proxy: Any = None
        """When proxied: the TcpProxy in front of the S3 server, which the brokers are given (object store loss)."""
        self.store_port = 0
        self.moto: Proc | None = None
        self.bookies: list[BookieProc] = []
        self.brokers: list[BrokerProc] = []

    # --- addresses ------------------------------------------------------------------------------
    @property
    def metadata_url(self) -> str:
        if self.postgres is not None:
            return str(self.postgres.url)
        return f"etcd://{HOST}:{self.etcd_port}"

    @property
    def metadata_endpoints(self) -> str:
        """Every etcd member, as ``tidelog broker --metadata`` takes them."""
        return "etcd://" + ",".join(f"{HOST}:{m.client_port}" for m in self.etcds) if self.etcds else self.metadata_url

    def etcd_leader(self) -> EtcdProc | None:
        """The member whose /metrics says ``etcd_server_is_leader 1`` (None if no running member does)."""
        for m in self.etcds:
            if not m.alive():
                continue
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, body = _http(m.client_port, "GET", "/metrics")
                if status == 200 and b"\netcd_server_is_leader 1" in body:
                    return m
        return None

    @property
    def object_store_url(self) -> str:
        query = {
            "endpoint": f"http://{HOST}:{self.store_port or self.moto_port}", "region": REGION,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        }  # fmt: skip
        return f"s3://{BUCKET}/{self.cluster}?" + "&".join(f"{k}={quote(v, safe=':/')}" for k, v in query.items())

    @property
    def bootstrap(self) -> str:
        return ",".join(b.address for b in self.brokers)

    def broker(self, i: int) -> BrokerProc:
        """Broker with node id ``i`` (1-based, as the node ids are)."""
        for b in self.brokers:
            if b.node_id == i:
                return b
        raise KeyError(f"no broker with node id {i}")

    def bookie(self, i: int) -> BookieProc:
        """Bookie ``i`` (1-based)."""
        return self.bookies[i - 1]

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        """Start everything; return the bootstrap string once all brokers serve and see each other."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.metadata_kind == "postgres":
                self._start_postgres()
            else:
                self._start_etcd()
            self._start_moto()
            for _ in range(self.n_bookies):
                self._start_bookie()
            self._wait_bookies_registered()
            for _ in range(self.n_brokers):
                self._new_broker().start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def add_broker(self) -> BrokerProc:
        """Start one more broker (the next node id) and wait until every broker lists it."""
        b = self._new_broker()
        b.start()
        self.wait_ready()
        return b

    def stop(self) -> None:
        """Brokers first (SIGTERM, in parallel), then bookies, moto, etcd."""
        if self.proxies is not None:
            self.proxies.heal_all()  # a broker stalled on a cut link would not stop in time
        for group in (self.brokers, self.bookies, [p for p in (self.moto, *self.etcds) if p is not None]):
            for p in group:
                if p.alive():
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
            for p in group:
                p.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.proxies is not None:
            self.proxies.close()
            self.proxies = None
            self.bookie_proxies, self.store_proxy, self.store_port = [], None, 0

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until every running broker answers Metadata listing every running broker.

        A broker restarted right after a kill finds its old registration still there until the old session
        times out, and exits; it is started again (until the deadline) rather than reported as failed.
        """
        deadline = time.monotonic() + (timeout or self.start_timeout)
        want = {b.node_id for b in self.brokers if b.alive()}
        pending = {b.node_id for b in self.brokers if b.alive()}
        last = ""
        while time.monotonic() < deadline:
            for b in self.brokers:
                if b.node_id in pending and not b.alive():
                    if REGISTERED_ELSEWHERE in b.run_log():
                        last = f"broker {b.node_id}: waiting for its previous session to expire"
                        b.start()
                        continue
                    raise DevClusterError(f"broker {b.node_id} exited; log {b.log_path}:\n{b.log_tail()}")
            for node_id in sorted(pending):
                b = self.broker(node_id)
                try:
                    seen = metadata_broker_ids(HOST, b.port)
                except (OSError, ValueError) as e:
                    last = f"broker {node_id}: {e}"
                    continue
                if want <= seen:
                    pending.discard(node_id)
                else:
                    last = f"broker {node_id} lists {sorted(seen)}, want {sorted(want)}"
            if not pending:
                return
            time.sleep(0.2)
        raise DevClusterError(f"brokers not ready in time ({last}); logs under {self.dir}")

    # --- parts ----------------------------------------------------------------------------------
    def _start_etcd(self) -> None:
        if shutil.which(self.etcd_binary) is None:
            raise DevClusterError(f"{self.etcd_binary!r} not found (Debian: apt-get install etcd-server)")
        ports = [(self._port(), self._port()) for _ in range(self.n_etcd)]
        names = ["tidelog-dev"] if self.n_etcd == 1 else [f"etcd-{i + 1}" for i in range(self.n_etcd)]
        initial = ",".join(f"{n}=http://{HOST}:{peer}" for n, (_c, peer) in zip(names, ports, strict=True))
        # Three members on a loaded machine need slower elections than one, or they keep electing.
        timing = ("50", "500") if self.n_etcd == 1 else ("100", "1500")
        for name, (client_port, peer_port) in zip(names, ports, strict=True):
            client, peer = f"http://{HOST}:{client_port}", f"http://{HOST}:{peer_port}"
            data = self.dir / ("etcd-data" if self.n_etcd == 1 else f"{name}-data")
            log_path = self.dir / ("etcd.log" if self.n_etcd == 1 else f"{name}.log")
            self.etcds.append(EtcdProc(name if self.n_etcd > 1 else "etcd", [
                self.etcd_binary, "--name", name, "--data-dir", str(data),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--heartbeat-interval", timing[0], "--election-timeout", timing[1],
            ], log_path, client_port=client_port, peer_port=peer_port))  # fmt: skip
        self.etcd, self.etcd_port = self.etcds[0], self.etcds[0].client_port
        for m in self.etcds:
            m.start()  # all before any wait: a member of three is healthy only once a quorum runs
        self.wait_etcd_healthy()

    def _start_postgres(self) -> None:
        from brokers.local_postgres import LocalPostgres, PostgresNotFound

        try:
            self.postgres = LocalPostgres(self.dir / "postgres", port=self._port(), start_timeout=self.start_timeout)
            self.postgres.start()
        except (PostgresNotFound, RuntimeError, OSError) as e:
            raise DevClusterError(f"postgres: {e}") from e

    def start_etcd(self) -> None:
        """Only the etcd member(s) (tests of the metadata client against a real etcd cluster)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_etcd()

    def wait_etcd_healthy(self) -> None:
        """Until every running etcd member says /health is true (a quorum serves)."""
        for m in self.etcds:
            if m.alive():
                self._wait_http(m, m.client_port, "/health", lambda status, body: b'"true"' in body)

    def _start_moto(self) -> None:
        self.moto_port = self._port()
        moto_bin = Path(sys.executable).with_name("moto_server")
        args = [str(moto_bin)] if moto_bin.exists() else [sys.executable, "-m", "moto.server"]
        self.moto = Proc("moto", [*args, "-H", HOST, "-p", str(self.moto_port)], self.dir / "moto.log")
        self.moto.start()
        self._wait_http(self.moto, self.moto_port, "/", lambda status, body: status == 200)
        status, body = _http(self.moto_port, "PUT", f"/{BUCKET}")
        if status != 200:
            raise DevClusterError(f"create bucket {BUCKET}: HTTP {status}: {body[:300]!r}")
        if self.proxied:
            self.store_port = self._port()
            self.store_proxy = self._proxy_runner().add(self.store_port, self.moto_port)

    def _proxy_runner(self) -> Any:
        if self.proxies is None:
            from brokers.verify.proxy import ProxyRunner

            self.proxies = ProxyRunner()
        return self.proxies

    def _start_bookie(self) -> BookieProc:
        index = len(self.bookies) + 1
        port, admin = self._port(), self._port()
        bid = f"bookie-{index}"
        metadata = self.metadata_endpoints  # every member: the bookie's client fails over between them
        extra: list[str] = []
        if self.proxied:
            proxy_port = self._port()
            self.bookie_proxies.append(self._proxy_runner().add(proxy_port, port))
            extra = ["--advertised", f"{HOST}:{proxy_port}"]
        b = BookieProc(
            bid,
            [*tidelog_command(), "bookie", "--metadata", metadata, "--data-dir", str(self.dir / bid),
             "--listen", f"{HOST}:{port}", "--bookie-id", bid, "--cluster", self.cluster,
             "--admin", f"{HOST}:{admin}", *extra],
            self.dir / f"{bid}.log", bookie_id=bid, port=port, admin_port=admin,
        )  # fmt: skip
        self.bookies.append(b)
        b.start()
        return b

    def _wait_bookies_registered(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = list(self.bookies)
        while pending and time.monotonic() < deadline:
            for b in list(pending):
                if not b.alive():
                    if "etcd: UNAVAILABLE" in b.run_log():  # a member of a 3-member etcd still settling
                        b.start()
                        continue
                    raise DevClusterError(f"{b.name} exited; log {b.log_path}:\n{b.log_tail()}")
                if "listening on" in b.log_tail(100_000):
                    pending.remove(b)
            time.sleep(0.1)
        if pending:
            raise DevClusterError(f"bookies not serving in time: {[b.name for b in pending]}")

    def _new_broker(self) -> BrokerProc:
        node_id = max((b.node_id for b in self.brokers), default=0) + 1
        port, admin = self._port(), self._port()
        name = f"broker-{node_id}"
        args = [
            *tidelog_command(), "broker", "--metadata", self.metadata_endpoints,
            "--object-store", self.object_store_url,
            "--listen", f"{HOST}:{port}", "--advertised", f"{HOST}:{port}", "--node-id", str(node_id),
            "--admin", f"{HOST}:{admin}", "--cluster", self.cluster, "--cache-dir", str(self.dir / name),
            *self.broker_args,
        ]  # fmt: skip
        b = BrokerProc(name, args, self.dir / f"{name}.log", node_id=node_id, port=port, admin_port=admin)
        self.brokers.append(b)
        return b

    def _wait_http(self, proc: Proc, port: int, path: str, ok: Callable[[int, bytes], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise DevClusterError(f"{proc.name} exited; log {proc.log_path}:\n{proc.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, body = _http(port, "GET", path)
                if ok(status, body):
                    return
            time.sleep(0.1)
        raise DevClusterError(f"{proc.name} did not answer in time; log {proc.log_path}")

    def describe(self) -> dict[str, Any]:
        """Addresses of every part (what ``tidelog dev-cluster`` prints and writes to cluster.json)."""
        return {
            "bootstrap": self.bootstrap, "metadata": self.metadata_url, "object_store": self.object_store_url,
            "brokers": [{"node_id": b.node_id, "address": b.address, "admin": b.admin, "pid": b.pid,
                         "log": str(b.log_path)} for b in self.brokers],
            "bookies": [{"id": b.bookie_id, "address": f"{HOST}:{b.port}", "admin": f"{HOST}:{b.admin_port}",
                         "pid": b.pid, "log": str(b.log_path)} for b in self.bookies],
        }  # fmt: skip


def _http(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request(method, path, headers=_DUMMY_AUTH)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def metadata_broker_ids(host: str, port: int, timeout: float = 5.0) -> set[int]:
    """Node ids in a Metadata v1 answer from ``host:port`` (blocking; a raw request, no client needed)."""
    import struct

    body = struct.pack(">i", 0)  # v1: an empty topic array asks for no topics (-1 would ask for all)
    header = struct.pack(">hhih", 3, 1, 7, 7) + b"devclus"
    frame = header + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        if not 0 < size < 1 << 24:
            raise ValueError(f"bad response size {size}")
        data = _recv_exact(s, size)
    pos = 4  # correlation id
    (count,) = struct.unpack_from(">i", data, pos)
    pos += 4
    ids: set[int] = set()
    for _ in range(count):
        (node_id,) = struct.unpack_from(">i", data, pos)
        pos += 4
        (hlen,) = struct.unpack_from(">h", data, pos)
        pos += 2 + hlen + 4  # host, port
        (rlen,) = struct.unpack_from(">h", data, pos)
        pos += 2 + max(rlen, 0)  # rack (nullable)
        ids.add(node_id)
    return ids


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


# --- ``tidelog dev-cluster`` ------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """Add the ``dev-cluster`` subcommand."""
    p = sub.add_parser("dev-cluster", help="run etcd, an S3 server, bookies and brokers locally (development)")
    p.add_argument("--brokers", type=int, default=3, help="number of brokers (default 3)")
    p.add_argument("--bookies", type=int, default=3, help="number of bookies (default 3)")
    p.add_argument("--dir", default="./dev-cluster", help="directory for data and logs (default ./dev-cluster)")
    p.add_argument("--base-port", type=int, default=None, help="first port to use (default: any free ports)")
    p.add_argument(
        "--metadata", choices=("etcd", "postgres"), default="etcd",
        help="metadata store to start: etcd (default) or a local PostgreSQL",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``tidelog dev-cluster``: start, print the bootstrap, stop on SIGINT/SIGTERM."""
    import json

    cluster = DevCluster(
        args.dir, brokers=args.brokers, bookies=args.bookies, base_port=args.base_port,
        metadata=getattr(args, "metadata", "etcd"),
    )  # fmt: skip
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        bootstrap = cluster.start()
        (Path(args.dir) / "cluster.json").write_text(json.dumps(cluster.describe(), indent=2) + "\n")
        for b in cluster.brokers:
            print(f"broker {b.node_id}: {b.address} (admin http://{b.admin}, log {b.log_path})")
        for k in cluster.bookies:
            print(f"bookie {k.bookie_id}: {HOST}:{k.port} (log {k.log_path})")
        print(f"{cluster.metadata_kind}: {cluster.metadata_url}  object store: {cluster.object_store_url}")
        print(f"bootstrap: {bootstrap}", flush=True)
        while True:
            time.sleep(1)
            for b in cluster.brokers:
                if b.popen is not None and not b.alive() and b.popen.returncode not in (None, -9, -19):
                    print(f"broker {b.node_id} exited with {b.popen.returncode}; log {b.log_path}", flush=True)
                    b.popen = None
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    except DevClusterError as e:
        print(f"tidelog dev-cluster: error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
