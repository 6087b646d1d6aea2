"""One process per data directory: an exclusive, non-blocking flock on ``DIR/LOCK``.

Used by every component that owns a directory (embedded metadata store, bookie, embedded broker). It lives
in the lowest package so each of them can use it under the dependency rule.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DirectoryLocked(RuntimeError):
    """Another process holds the directory."""


def lock_directory(directory: Path, holder: str) -> int:
    """Create ``directory`` if needed and lock it; returns the fd to close on release (blocking I/O).

    Raises DirectoryLocked naming ``holder`` (what else may be using it) if another process holds it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryLocked(f"{directory} is in use by another {holder}") from None
    return fd
