"""Starting a server process from the command line: fail early, in one line, and leave nothing half-made.

Before anything is created, each address the process will listen on is tried (a bind, then closed), so
"address already in use" is a usage error (exit 2) said in one line instead of an ``[Errno 98]`` after the
data directory was initialised. If start-up fails anyway, :class:`DataDirGuard` puts the data directory
back as it found it: removed if this start created it, else only the entries this start added — and
never once the server has said it is ready (then the directory holds real data).
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from brokers.config import ConfigError

USAGE_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def check_listen(host: str, port: int, what: str) -> None:
    """Raise ConfigError if ``host:port`` cannot be listened on now (in use, not a local address, or
    privileged). Port 0 (any free port) is not checked."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"{what} {host}:{port}: cannot resolve {host!r} ({e.strerror})") from None
    for family, kind, proto, _, address in infos[:1]:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            try:
                s.bind(address)
            except OSError as e:
                raise ConfigError(f"{what} {host}:{port}: {describe_os_error(e)}") from None


def describe_os_error(e: OSError) -> str:
    """An OSError as a short lowercase reason ("address already in use"), without ``[Errno N]``."""
    reason = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
    return reason.lower()


def is_usage_error(e: OSError) -> bool:
    """Whether the user can fix it by choosing another address or port (exit code 2)."""
    return e.errno in USAGE_ERRNOS


@dataclass
class DataDirGuard:
    """Remembers a data directory's state before start-up, to undo what a failed start-up made."""

    path: Path
    existed: bool = False
    entries: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def before_start(cls, path: str) -> DataDirGuard:
        p = Path(path)
        existed = os.path.lexists(p)
        entries = frozenset(os.listdir(p)) if existed and p.is_dir() else frozenset()
        return cls(p, existed, entries)

    def undo(self) -> None:
        """Remove what start-up created: the directory itself if it was not there, else the new entries."""
        if not self.existed:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if not self.path.is_dir():
            return
        for name in set(os.listdir(self.path)) - self.entries:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)


GC_THRESHOLDS = (20_000, 20, 50)
"""Python's defaults are (700, 10, 10): a young collection every 700 allocations and a full one every 100 young
ones, each full one walking every object of the heap (tens of ms on a loaded broker, the whole event loop
stopped). Larger young generations make collections rarer; most of a broker's garbage is acyclic and freed
by reference counting anyway."""


def settle_gc() -> None:
    """Once start-up is done: collect, then freeze what is alive (modules, config, loaded partition state) so
    no later collection walks it again, and make collections rarer (``GC_THRESHOLDS``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
