"""ObjectStore in a local directory: obstore LocalStore for reads, listing and deletes; durable writes here.

obstore's LocalStore writes a staging file and links or renames it into place without fsync, so after a
crash a create-only key could exist with lost contents, and a retried offload would then meet
ObjectExists on a damaged object. Writes here therefore go: staging file ``<name>#<digits>`` in the same
directory (obstore's own staging convention, hidden from its listings; ``#`` is not allowed in keys),
write, fsync, then ``link`` (create-only: atomic, fails with EEXIST) or ``rename`` (overwrite), then fsync
the directory. A crash leaves either no object or the whole object, plus at worst a hidden staging file.

A local directory cannot hold both ``a`` and ``a/b`` (S3 can); such a put raises ObjectStoreError.

Disk full: while a data directory of this process on the same file system refuses writes (the bookie journal
or the metadata store ran out of space and released its reserve, metadata/disk_reserve.py), puts are refused
with ObjectStoreUnavailable (the offloader retries later) rather than take the space the reserve freed for
deletes. A put that fails midway (ENOSPC, EIO) leaves no staging file behind.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from pathlib import Path

from obstore.exceptions import GenericError
from obstore.store import LocalStore

from metadata.disk_reserve import refusing
from storage.objectstore.api import ObjectExists, ObjectStoreError, ObjectStoreUnavailable
from storage.objectstore.obstore_store import ChunkStream, ObstoreObjectStore

__all__ = ["LocalObjectStore"]

STREAM_WRITE_BYTES = 4 * 1024 * 1024
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class LocalObjectStore(ObstoreObjectStore):
    """Objects as files under ``root`` (created if missing); keys map to relative paths."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._root = Path(root).expanduser().resolve()
        self._root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        super().__init__(LocalStore(self._root, automatic_cleanup=True, mkdir=True), description=self._root.as_uri())

    @property
    def root(self) -> Path:
        """The directory holding the objects."""
        return self._root

    def _is_missing(self, exc: Exception) -> bool:
        # Reading or deleting "a/b" when "a" is a file (ENOTDIR), or deleting "a" when it is a directory
        # of other objects (EISDIR): obstore reports these as generic errors; there is no such object.
        if isinstance(exc, GenericError):
            text = str(exc)
            return any(f"(os error {code})" in text for code in (errno.ENOTDIR, errno.EISDIR))
        return super()._is_missing(exc)

    async def _write(self, key: str, data: bytes | memoryview, if_absent: bool) -> None:
        try:
            await asyncio.to_thread(self._write_file, key, data, if_absent)
        except ObjectStoreError:
            raise
        except OSError as exc:  # disk full, I/O error, read-only file system...
            raise ObjectStoreUnavailable(f"{self!r}: put {key!r}: {exc}") from exc

    def _refusing_disk(self) -> str | None:
        """Why a data directory on this store's file system refuses writes now, if one does."""
        dirs = refusing()
        if not dirs:
            return None
        device = os.stat(self._root).st_dev
        for directory, why in dirs.items():
            try:
                if os.stat(directory).st_dev == device:
                    return f"{directory}: {why}"
            except OSError:
                continue
        return None

    def _write_file(self, key: str, data: bytes | memoryview, if_absent: bool) -> None:
        full = self._refusing_disk()
        if full is not None:
            raise ObjectStoreUnavailable(f"{self!r}: put {key!r} refused while the disk is full ({full})")
        final = self._root.joinpath(*key.split("/"))
        staging, fd = self._open_staging(key, final)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                if self._fsync:
                    os.fsync(out.fileno())
            self._place(key, staging, final, if_absent)
        finally:
            staging.unlink(missing_ok=True)
        if self._fsync:
            _fsync_dir(final.parent)

    async def _write_stream(self, key: str, chunks: ChunkStream, if_absent: bool) -> None:
        """A long stream: written to the staging file in runs of about ``STREAM_WRITE_BYTES`` (one
        ``writev`` of the chunks' own buffers each, in a thread), then fsynced and linked into place."""
        try:
            await self._write_chunks(key, chunks, if_absent)
        except ObjectStoreError:
            raise
        except OSError as exc:
            raise ObjectStoreUnavailable(f"{self!r}: put {key!r}: {exc}") from exc

    async def _write_chunks(self, key: str, chunks: ChunkStream, if_absent: bool) -> None:
        full = self._refusing_disk()
        if full is not None:
            raise ObjectStoreUnavailable(f"{self!r}: put {key!r} refused while the disk is full ({full})")
        final = self._root.joinpath(*key.split("/"))
        staging, fd = await asyncio.to_thread(self._open_staging, key, final)
        try:
            try:
                run: list[memoryview] = []
                size = 0
                async for chunk in chunks:
                    run.append(memoryview(chunk))
                    size += len(run[-1])
                    if size >= STREAM_WRITE_BYTES:
                        await asyncio.to_thread(_write_all, fd, run)
                        run, size = [], 0
                if run:
                    await asyncio.to_thread(_write_all, fd, run)
                if self._fsync:
                    await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
            await asyncio.to_thread(self._place, key, staging, final, if_absent)
        finally:
            staging.unlink(missing_ok=True)
        if self._fsync:
            await asyncio.to_thread(_fsync_dir, final.parent)

    def _place(self, key: str, staging: Path, final: Path, if_absent: bool) -> None:
        """Link (create-only) or rename the written staging file to ``final``."""
        if if_absent:
            try:
                os.link(staging, final)
            except FileExistsError:
                if final.is_dir():
                    raise _conflict(self, key, "a directory of other objects has that name") from None
                raise ObjectExists(key) from None
        else:
            try:
                os.replace(staging, final)
            except IsADirectoryError:
                raise _conflict(self, key, "a directory of other objects has that name") from None

    def _open_staging(self, key: str, final: Path) -> tuple[Path, int]:
        """Create the parent directories and an exclusive staging file next to ``final``."""
        for _attempt in range(5):
            self._make_parents(key, final.parent)
            staging = final.with_name(f"{final.name}#{secrets.randbelow(10**15)}")
            try:
                return staging, os.open(staging, _OPEN_FLAGS, 0o644)
            except FileNotFoundError:
                continue  # a concurrent delete pruned the empty parent directory; make it again
            except FileExistsError:
                continue  # staging name collision
        raise ObjectStoreUnavailable(f"{self!r}: put {key!r}: could not create a staging file")

    def _make_parents(self, key: str, directory: Path) -> None:
        missing: list[Path] = []
        probe = directory
        while probe != self._root and not probe.is_dir():
            missing.append(probe)
            probe = probe.parent
        if not missing:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _conflict(self, key, "an object is stored where a directory is needed") from None
        if self._fsync:
            for created in reversed(missing):
                _fsync_dir(created.parent)


def _conflict(store: LocalObjectStore, key: str, why: str) -> ObjectStoreError:
    return ObjectStoreError(f"{store!r}: put {key!r}: {why} (a local directory cannot hold both a and a/b)")


def _write_all(fd: int, views: list[memoryview]) -> None:
    """Write every byte of ``views`` to ``fd`` (``writev`` may write less than asked)."""
    pending = [v for v in views if len(v)]
    while pending:
        written = os.writev(fd, pending[:1024])
        while written and pending:
            if written >= len(pending[0]):
                written -= len(pending.pop(0))
            else:
                pending[0] = pending[0][written:]
                written = 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
