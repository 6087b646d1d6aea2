"""A local PostgreSQL server for the dev cluster and the tests (Debian's ``postgresql`` package).

``LocalPostgres(directory).start()`` runs ``initdb`` into ``directory/data`` the first time, then
``postgres`` on 127.0.0.1 (a free port, or the one given) with its socket in ``directory``; ``url`` is
``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth: it listens on loopback only).

PostgreSQL refuses to run as root, so when this process is root the server runs as the ``postgres``
account (created by the Debian package) and the directory is handed to it. The settings trade crash
durability for speed (fsync off: a killed server loses nothing, a crashed machine may): this is a
development and test server, not a production one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

SERVER_USER = "postgres"
FAST_SETTINGS = ("fsync=off", "full_page_writes=off", "max_connections=200")  # WAL still reaches the OS at commit


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: $TIDELOG_PG_BIN, the newest Debian one, or PATH."""
    configured = os.environ.get("TIDELOG_PG_BIN")
    if configured:
        return Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def postgres_available() -> bool:
    """Whether a PostgreSQL server can be started here (tests needing one skip otherwise)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None or not (bin_dir / "postgres").exists():
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return False
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """PR_SET_PDEATHSIG: the server shuts down at once (SIGQUIT) when the process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl(1, signal.SIGQUIT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """One PostgreSQL server process; ``restart`` keeps its port and data."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        port: int = 0,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        self.dir = Path(directory)
        self.die_with_parent = die_with_parent
        self.port = port
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        bin_dir = postgres_bin_dir()
        if bin_dir is None or not (bin_dir / "postgres").exists():
            raise PostgresNotFound("PostgreSQL not found (Debian: apt-get install postgresql)")
        self.bin_dir = bin_dir

    @property
    def url(self) -> str:
        return f"postgresql://{self._user()}@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def start(self) -> LocalPostgres:
        """initdb (first time only), start the server and wait until it accepts connections."""
        if self.process is not None:
            raise RuntimeError("postgres is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.dir)
        self._check_reachable()
        if not (self.dir / "data" / "PG_VERSION").exists():
            self._initdb()
        fixed = self.port != 0
        for _attempt in range(1 if fixed else 5):
            if not fixed:
                self.port = _free_port()
            self._spawn()
            if self._wait_ready():
                return self
            self._terminate(signal.SIGQUIT)
        raise RuntimeError(f"postgres did not start; see {self.log_path}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, data is kept)."""
        self._terminate(signal.SIGINT)

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT), as close to a crash as the server allows without orphans."""
        self._terminate(signal.SIGQUIT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- internals --------------------------------------------------------------------------------
    @staticmethod
    def _as_server_user() -> bool:
        return os.geteuid() == 0

    def _user(self) -> str:
        return SERVER_USER if self._as_server_user() else pwd.getpwuid(os.geteuid()).pw_name

    def _hand_over(self, path: Path) -> None:
        if self._as_server_user():
            account = pwd.getpwnam(SERVER_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _run_as(self) -> tuple[int | None, int | None, list[int] | None]:
        """(user, group, extra_groups) for subprocess: the server account when we are root, else ours."""
        if not self._as_server_user():
            return None, None, None
        account = pwd.getpwnam(SERVER_USER)
        return account.pw_uid, account.pw_gid, []

    def _check_reachable(self) -> None:
        """As root the server runs as SERVER_USER: every parent of the directory must let it through."""
        user, group, extra_groups = self._run_as()
        if user is None:
            return
        probe = subprocess.run(  # noqa: S603
            ["/usr/bin/test", "-w", str(self.dir)], stdin=subprocess.DEVNULL, check=False,
            user=user, group=group, extra_groups=extra_groups,
        )  # fmt: skip
        if probe.returncode != 0:
            raise RuntimeError(
                f"the {SERVER_USER} account cannot reach {self.dir} (a parent directory is not searchable by "
                "others): use a directory under one that is"
            )

    def _initdb(self) -> None:
        data = self.dir / "data"
        user, group, extra_groups = self._run_as()
        with open(self.dir / "initdb.log", "wb") as out:
            result = subprocess.run(  # noqa: S603 (fixed arguments, our own binary)
                [str(self.bin_dir / "initdb"), "-D", str(data), "-U", self._user(), "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir, check=False,
                user=user, group=group, extra_groups=extra_groups,
            )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed; see {self.dir / 'initdb.log'}")

    def _spawn(self) -> None:
        settings = [*FAST_SETTINGS, "listen_addresses=127.0.0.1", f"port={self.port}",
                    f"unix_socket_directories={self.dir}"]  # fmt: skip
        args = [str(self.bin_dir / "postgres"), "-D", str(self.dir / "data")]
        for setting in settings:
            args += ["-c", setting]
        log = open(self.log_path, "ab")  # the child keeps its own copy of the descriptor
        self._hand_over(self.log_path)
        user, group, extra_groups = self._run_as()
        try:
            self.process = subprocess.Popen(  # noqa: S603
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                start_new_session=True, user=user, group=group, extra_groups=extra_groups,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )  # fmt: skip
        finally:
            log.close()

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False  # exited: most likely the port was taken meanwhile
            ready = subprocess.run(  # noqa: S603
                [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", self._user()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            if ready.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def _terminate(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
