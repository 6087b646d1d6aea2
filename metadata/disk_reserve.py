"""A preallocated reserve file, given back when the disk fills so that deletes can still be written.

A component that appends to a local file (the bookie journal, the embedded metadata store's log) keeps a
file of ``size`` bytes next to its data. When a write fails with ENOSPC it releases the reserve: the space
freed is what the records of a delete (a journal DELETE record, a metadata delete, an index checkpoint)
need, so an operator can free space through the broker's own API on a disk that is full. Once the disk
has room again (``restore``: at least the reserve plus ``margin`` free), the reserve is written again;
that write — real blocks, then fsync — is also the probe that the disk takes writes again.

Blocking throughout: call from a worker thread. Lives in ``metadata`` (the lowest layer) so that both the
metadata store and the storage layer can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
_CHUNK = 1024 * 1024
_ZEROS = bytes(_CHUNK)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


_refusing: dict[str, str] = {}  # directory -> why it refuses writes now (set and cleared from worker threads)


def report_refusing(directory: Path, error: str | None) -> None:
    """Record that ``directory`` refuses writes for a disk error (None: it takes writes again), for the
    broker's metrics (``tidelog_storage_disk_full``): one process-wide view of its data directories."""
    if error is None:
        _refusing.pop(str(directory), None)
    else:
        _refusing[str(directory)] = error


def refusing() -> dict[str, str]:
    """The directories of this process refusing writes now, and why."""
    return dict(_refusing)


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is 'no space left on device' (or a quota exceeded)."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still allocate on the file system holding ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class DiskReserve:
    """The reserve file ``path`` of ``size`` bytes (0: no reserve file at all)."""

    def __init__(self, path: Path, size: int = DEFAULT_RESERVE_BYTES) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        """Whether the reserve file is in place, whole."""
        if self.size == 0:
            return True
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def ensure(self) -> None:
        """Create the reserve if it is missing or short (at start-up); OSError if the disk has no room."""
        if not self.held:
            self._write()

    def release(self) -> bool:
        """Delete the reserve (its space becomes free); returns whether there was one to release."""
        if self.size == 0:
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):
            _fsync_dir(self.path.parent)
        return True

    def restore(self, margin: int) -> bool:
        """Write the reserve again if at least its size plus ``margin`` is free; True once it is in place
        (the disk took a real write and an fsync). False, or OSError from the write, if not yet."""
        if self.held:
            return True
        if free_bytes(self.path.parent) < self.size + margin:
            return False
        self._write()
        return True

    def probe(self) -> None:
        """Prove the disk takes a write and an fsync now (a small file, written, synced, removed); OSError
        if not. For errors other than a full disk, where the reserve was kept and proves nothing."""
        probe = self.path.with_name(self.path.name + ".probe")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, _ZEROS[:4096])
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                left = self.size
                while left > 0:  # real blocks: posix_fallocate is not honoured by every file system
                    n = os.write(fd, _ZEROS[: min(left, _CHUNK)])
                    left -= n
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
