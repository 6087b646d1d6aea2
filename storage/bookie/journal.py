"""The bookie journal: append-only files, group-committed by one writer thread.

Files ``journal-{n:08d}.log`` in one directory, numbered from 1; the writer rolls to the next file once
the current one has passed ``roll_size``. Each record is a fixed 52-byte big-endian header and a payload
(format and scanner in storage/bookie/records.py; docs/data-formats.md, "Bookie journal format").

Group commit: ``append`` only queues the record and returns a future. The writer thread takes everything
queued (up to ``max_batch_bytes``), writes it with one ``pwritev`` and one ``fdatasync``, then hands the
whole batch back to the event loop in one ``call_soon_threadsafe``: the ``apply`` callback sees every
record in journal order (that is how the bookie's index learns positions) before the futures resolve.
While one batch is being synced the next one accumulates, so the fsync rate stays at the disk's rate
whatever the append rate.

Start-up replays the files in order through the same ``apply`` callback, from the first file or from a
position a checkpointed index reflects (``start``). Files before the last one were fsync'd whole before
the writer rolled past them: a damaged record there is corruption, skipped with a warning by
resynchronising on the next valid header. In the last file a bad record (short, bad magic, bad header
CRC, payload past the end of the file, payload CRC mismatch) that no valid record follows is a torn tail
left by a crash during an unacknowledged write: the file is truncated there. A bad record that valid
records follow is corruption, not a torn tail: it is skipped like in older files, except that a record
whose header holds and only its payload fails its CRC is still indexed, so reads of it report the damage
(CorruptEntry, and the reader goes to another replica) rather than claim the entry was never written.

Disk full and disk errors: a write or fdatasync that fails with an OSError never acknowledges its batch
(BookieDiskError; the ledger client reports StorageUnavailable, the broker KAFKA_STORAGE_ERROR). The file's
state after a failed fsync is unknown (the kernel may have dropped the dirty pages and marked them clean,
as PostgreSQL learned in 2018), so the journal cuts it back to its last synced record where it can and
never writes to it again: the next write starts a new file. The journal then refuses entries and fences
at once (no queue grows) and releases its reserve file (``reserve``, metadata/disk_reserve.py), so DELETE
records — deleting a topic is how an operator frees space — still go through. About once a second the
writer thread tries to write the reserve again; once that write and its fsync succeed, the journal takes
writes again by itself. One log line when writes stop, one when they resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from metadata.disk_reserve import DEFAULT_RESERVE_BYTES, DiskReserve, is_no_space, report_refusing
from storage.bookie.records import (
    HEADER_SIZE,
    MAGIC,
    Apply,
    JournalRecord,
    RecordKind,
    encode_header,
    file_name,
    scan_file,
)
from storage.entry import BookieUnavailable, CorruptEntry, entry_crc
from storage.ledger.api import DiskError, NoSuchEntry
from storage.metrics import JOURNAL_FSYNC_SECONDS

__all__ = [
    "HEADER_SIZE", "MAGIC", "Apply", "BookieDiskError", "FileReclaimed", "Journal", "JournalRecord",
    "JournalStartError", "JournalStats", "RecordKind", "encode_header", "file_name", "scan_file",
]

log = logging.getLogger(__name__)

DEFAULT_ROLL_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_BATCH_BYTES = 16 * 1024 * 1024
_IOV_MAX = 1024
_FILE_RE = re.compile(r"^journal-(\d{8})\.log$")
PROBE_INTERVAL_S = 1.0  # how often a journal stopped by a disk error tries to write its reserve again
RESERVE_NAME = "reserve"


@dataclass(frozen=True, slots=True)
class JournalStats:
    """Counters since open: records and bytes written, write batches, fsyncs; files on disk now."""

    records: int
    bytes: int
    batches: int
    fsyncs: int
    files: int
    pending: int
    failed: str | None
    disk_error: str | None = None  # why writes are refused for now (disk full, I/O error); None: taking writes
    disk_errors: int = 0  # times writes stopped for a disk error since open


class _Pending(NamedTuple):
    header: bytes
    payload: bytes | memoryview
    size: int
    kind: RecordKind
    ledger_id: int
    entry_id: int
    lac: int
    ledger_length: int
    crc: int
    future: asyncio.Future[JournalRecord]


class BookieDiskError(BookieUnavailable, DiskError):
    """The bookie's disk is full or failing: the write was not made durable (and is not acknowledged)."""


class FileReclaimed(NoSuchEntry):
    """A read named a journal file that has been deleted since (its records were dead or copied forward)."""


class JournalStartError(Exception):
    """The journal does not reach the start position asked for (its file is gone or shorter)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwritev_all(fd: int, bufs: list[bytes | memoryview], offset: int) -> int:
    """Write every buffer at ``offset`` (handling short writes and IOV_MAX); returns bytes written."""
    total = 0
    i = 0
    while i < len(bufs):
        written = os.pwritev(fd, bufs[i : i + _IOV_MAX], offset + total)
        if written <= 0:
            raise OSError("pwritev wrote nothing")
        total += written
        while written > 0:
            n = len(bufs[i]) if isinstance(bufs[i], bytes) else memoryview(bufs[i]).nbytes
            if written >= n:
                written -= n
                i += 1
            else:
                bufs[i] = memoryview(bufs[i])[written:]
                written = 0
    return total


class Journal:
    """An append-only, group-committed journal in one directory. Open with ``await Journal.open(...)``."""

    def __init__(
        self, directory: Path, apply: Apply, roll_size: int, max_batch_bytes: int, reserve_bytes: int
    ) -> None:
        self._dir = directory
        self._apply = apply
        self._roll_size = roll_size
        self._max_batch = max_batch_bytes
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._closing = False
        self._aborted = False
        self._failed: BaseException | None = None
        self._read_fds: dict[int, int] = {}
        self._retired_fds: list[int] = []
        self._reads_in_flight = 0
        self._wfd = -1
        self._file_no = 0
        self._offset = 0
        self._applied_file_no = 0
        self._applied_pos = (0, 0)
        self.replayed_bytes = 0  # journal bytes scanned at start-up
        self._records = self._bytes = self._batches = self._fsyncs = 0
        self._reserve = DiskReserve(directory / RESERVE_NAME, reserve_bytes)
        self._disk_error: OSError | None = None  # set by the writer thread: writes refused until a probe succeeds
        self._disk_errors = 0
        self._probe_at = 0.0
        self._abandoned = False  # the current file saw a failed write or fsync: the next write starts a new one
        self._thread = threading.Thread(target=self._run, name=f"journal-writer:{directory}", daemon=True)

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        apply: Apply,
        *,
        roll_size: int = DEFAULT_ROLL_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        start: tuple[int, int] | None = None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> Journal:
        """Open (creating) the journal in ``directory``, replaying its records through ``apply``: every
        record, or with ``start`` = (file, offset) only those from that position on (JournalStartError if
        the journal does not reach it). ``reserve_bytes`` are kept in a reserve file, released when the disk
        fills so that deletes can still be written.

        ``apply`` is then called on the event loop for every record once it is durable, in journal order.
        """
        journal = cls(Path(directory), apply, roll_size, max_batch_bytes, reserve_bytes)
        try:
            await asyncio.to_thread(journal._recover, start)
        except BaseException:
            journal._close_fds()
            raise
        journal._thread.start()
        return journal

    # --- start-up -----------------------------------------------------------------------------
    def _recover(self, start: tuple[int, int] | None) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        files = self.list_files(self._dir)
        if start is not None:
            first, offset = start
            if first not in files or (self._dir / file_name(first)).stat().st_size < offset:
                raise JournalStartError(f"journal {self._dir} does not reach file {first} offset {offset}")
        for i, file_no in enumerate(files):
            path = self._dir / file_name(file_no)
            tail = i == len(files) - 1
            self._read_fds[file_no] = os.open(path, os.O_RDONLY)
            if start is not None and file_no < start[0]:
                continue  # reflected in the checkpoint
            begin = start[1] if start is not None and file_no == start[0] else 0
            good = scan_file(path, file_no, tail, self._apply, begin)
            self.replayed_bytes += good - begin
            if tail:
                if good < path.stat().st_size:
                    log.warning("journal %s: truncating torn tail at offset %d", path, good)
                    os.truncate(path, good)
                self._wfd = os.open(path, os.O_WRONLY)
                os.fsync(self._wfd)
                self._file_no, self._offset = file_no, good
        if not files:
            self._open_file(1)
        self._applied_file_no = self._file_no
        self._applied_pos = (self._file_no, self._offset)
        try:  # the reserve, unless the disk is too full for it and as much again: then writes wait for room
            if not self._reserve.restore(margin=self._reserve.size):
                raise OSError(errno.ENOSPC, "less than twice the reserve free at start")
        except OSError as exc:
            self._reserve.release()
            self._stop_writes(exc)

    @staticmethod
    def list_files(directory: Path) -> list[int]:
        """Numbers of the journal files in ``directory``, ascending."""
        found = (_FILE_RE.match(p.name) for p in directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _open_file(self, file_no: int) -> None:
        path = self._dir / file_name(file_no)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == 0:  # left by an earlier attempt that failed before any record
                path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _fsync_dir(self._dir)
            self._read_fds[file_no] = os.open(path, os.O_RDONLY)
        except OSError:
            os.close(fd)
            raise
        if self._wfd >= 0:
            os.close(self._wfd)
        self._wfd, self._file_no, self._offset = fd, file_no, 0

    # --- appends ------------------------------------------------------------------------------
    def append(
        self,
        kind: RecordKind,
        ledger_id: int,
        entry_id: int,
        lac: int,
        ledger_length: int,
        payload: bytes | memoryview,
        crc: int,
    ) -> asyncio.Future[JournalRecord]:
        """Queue a record; the future resolves (after ``apply`` saw it) once it is on disk.

        ``payload`` is referenced, not copied, until written: it must not change meanwhile. Call from the
        event loop the journal was opened on.
        """
        size = len(payload) if isinstance(payload, bytes) else payload.nbytes
        header = encode_header(kind, ledger_id, entry_id, lac, ledger_length, size, crc)
        future: asyncio.Future[JournalRecord] = self._loop.create_future()
        item = _Pending(header, payload, size, kind, ledger_id, entry_id, lac, ledger_length, crc, future)
        if self._failed is not None:
            raise BookieUnavailable(f"journal failed: {self._failed!r}")
        if self._closing:
            raise BookieUnavailable("journal closed")
        disk_error = self._disk_error
        if disk_error is not None and kind is not RecordKind.DELETE:
            raise BookieDiskError(f"journal {self._dir}: writes refused until the disk has room again: {disk_error}")
        self._queue.put(item)  # after a failure the writer thread fails whatever still arrives
        return future

    def _run(self) -> None:
        """The writer thread: one write and one fdatasync per batch of everything queued."""
        q = self._queue
        while True:
            if self._disk_error is not None and not self._aborted:
                try:
                    first = q.get(timeout=max(0.0, self._probe_at - time.monotonic()))
                except queue.Empty:
                    self._probe()
                    continue
                if time.monotonic() >= self._probe_at:
                    self._probe()
            else:
                first = q.get()
            if first is None:
                return
            batch = [first]
            nbytes = HEADER_SIZE + first.size
            stop = False
            while nbytes < self._max_batch:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                nbytes += HEADER_SIZE + item.size
            if self._aborted:
                self._fail(BookieUnavailable("journal aborted"), batch)
            elif self._failed is not None:
                self._fail(self._failed, batch)
            else:
                self._write_or_fail(batch)
            if stop:
                return

    def _write_or_fail(self, batch: list[_Pending]) -> None:
        """Write a batch; a disk error stops writes for now (nothing of the batch is acknowledged)."""
        disk_error = self._disk_error
        if disk_error is not None:  # queued before writes stopped: only deletes still go through
            refused = [p for p in batch if p.kind is not RecordKind.DELETE]
            if refused:
                self._fail(BookieDiskError(f"writes refused until the disk takes writes again: {disk_error}"), refused)
                batch = [p for p in batch if p.kind is RecordKind.DELETE]
            if not batch:
                return
        try:
            done = self._write(batch)
        except OSError as exc:
            self._abandon_file()
            self._stop_writes(exc)
            self._fail(BookieDiskError(f"journal {self._dir}: {exc}"), batch)
        except BaseException as exc:
            log.error("journal %s failed; the bookie stops taking writes: %r", self._dir, exc)
            self._failed = exc
            self._fail(exc, batch)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._complete, done)

    def _abandon_file(self) -> None:
        """After a failed write or fsync: cut the file back to its last synced record if possible, and
        never write to it again (its unsynced pages may be lost whatever a later fsync says)."""
        if self._wfd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._wfd, self._offset)
            os.fsync(self._wfd)
        with contextlib.suppress(OSError):
            os.close(self._wfd)
        self._wfd = -1
        self._abandoned = True

    def _stop_writes(self, exc: OSError) -> None:
        """Refuse writes (deletes excepted) until ``_probe`` finds the disk writable; one log line."""
        self._disk_errors += 1
        self._probe_at = time.monotonic() + PROBE_INTERVAL_S
        released = self._reserve.release() if is_no_space(exc) else False
        if self._disk_error is None:
            log.error(
                "journal %s: %s; refusing writes until the disk takes writes again%s",
                self._dir, exc, " (reserve released for deletes)" if released else "",
            )  # fmt: skip
        self._disk_error = exc
        report_refusing(self._dir, str(exc))

    def _probe(self) -> None:
        """While writes are refused: write the reserve again; once that works, take writes again."""
        if self._disk_error is None:
            return
        self._probe_at = time.monotonic() + PROBE_INTERVAL_S
        try:
            if is_no_space(self._disk_error):
                ok = self._reserve.restore(margin=self._reserve.size)
            else:  # an I/O error: the reserve is still there, so test a real write and fsync
                self._reserve.probe()
                ok = True
        except OSError as exc:
            log.debug("journal %s: disk still refuses writes: %s", self._dir, exc)
            ok = False
            if is_no_space(exc):
                self._reserve.release()
        if ok:
            log.warning("journal %s: the disk takes writes again; taking writes", self._dir)
            self._disk_error = None
            report_refusing(self._dir, None)

    def _write(self, batch: list[_Pending]) -> list[tuple[JournalRecord, asyncio.Future[JournalRecord]]]:
        if self._offset >= self._roll_size or self._abandoned or self._wfd < 0:
            self._open_file(self._file_no + 1)
            self._abandoned = False
        file_no, start = self._file_no, self._offset
        pos = start
        bufs: list[bytes | memoryview] = []
        done: list[tuple[JournalRecord, asyncio.Future[JournalRecord]]] = []
        for p in batch:
            bufs.append(p.header)
            if p.size:
                bufs.append(p.payload)
            pos += HEADER_SIZE
            rec = JournalRecord(
                p.kind, p.ledger_id, p.entry_id, p.lac, p.ledger_length, p.crc, file_no, pos, p.size
            )
            done.append((rec, p.future))
            pos += p.size
        _pwritev_all(self._wfd, bufs, start)
        synced = time.perf_counter()
        os.fdatasync(self._wfd)
        JOURNAL_FSYNC_SECONDS.observe(time.perf_counter() - synced)
        self._offset = pos
        self._records += len(batch)
        self._bytes += pos - start
        self._batches += 1
        self._fsyncs += 1
        return done

    def _fail(self, exc: BaseException, batch: list[_Pending]) -> None:
        error = exc if isinstance(exc, BookieDiskError) else BookieUnavailable(f"journal write failed: {exc!r}")
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._fail_futures, batch, error)

    @staticmethod
    def _fail_futures(items: list[_Pending], error: BookieUnavailable) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(type(error)(str(error)))

    def _complete(self, done: list[tuple[JournalRecord, asyncio.Future[JournalRecord]]]) -> None:
        apply = self._apply
        for rec, future in done:
            apply(rec)
            if not future.done():
                future.set_result(rec)
        last = done[-1][0]
        self._applied_file_no = last.file_no
        self._applied_pos = (last.file_no, last.offset + last.size)

    # --- reads --------------------------------------------------------------------------------
    async def read_many(self, locations: list[tuple[int, int, int, int]]) -> tuple[list[bytes], Exception | None]:
        """Read payloads at (file, offset, size, crc) in a worker thread, verifying each CRC.

        Returns the payloads read before the first failure and that failure (CorruptEntry, or
        FileReclaimed if the file has been deleted meanwhile), or None.
        """
        self._reads_in_flight += 1
        try:
            return await asyncio.to_thread(self._read_blocking, locations)
        finally:
            self._reads_in_flight -= 1
            if not self._reads_in_flight and self._retired_fds:
                self._close_retired()

    def _read_blocking(self, locations: list[tuple[int, int, int, int]]) -> tuple[list[bytes], Exception | None]:
        out: list[bytes] = []
        for file_no, offset, size, crc in locations:
            fd = self._read_fds.get(file_no)
            if fd is None:
                return out, FileReclaimed(f"journal file {file_no} has been reclaimed")
            try:
                data = os.pread(fd, size, offset)
            except OSError as exc:
                return out, CorruptEntry(f"journal file {file_no} offset {offset}: {exc}")
            if len(data) != size or entry_crc(data) != crc:
                return out, CorruptEntry(f"journal file {file_no} offset {offset}: CRC-32C mismatch")
            out.append(data)
        return out, None

    # --- reclaiming files ---------------------------------------------------------------------
    @property
    def applied_file_no(self) -> int:
        """The file of the newest record applied so far: every older file is complete and applied."""
        return self._applied_file_no

    @property
    def applied_position(self) -> tuple[int, int]:
        """(file, offset) just past the newest record applied: what an index checkpoint taken now reflects."""
        return self._applied_pos

    @property
    def current_file_no(self) -> int:
        """The file being written."""
        return self._file_no

    @property
    def directory(self) -> Path:
        return self._dir

    def path_of(self, file_no: int) -> Path:
        return self._dir / file_name(file_no)

    async def remove_files(self, file_nos: list[int]) -> None:
        """Delete whole journal files (never the current one) whose records are all dead."""
        for file_no in file_nos:
            if file_no >= self._file_no:
                raise ValueError(f"journal file {file_no} is still being written")
            fd = self._read_fds.pop(file_no, None)
            if fd is not None:
                self._retired_fds.append(fd)
        if not self._reads_in_flight:
            self._close_retired()
        await asyncio.to_thread(self._unlink, file_nos)

    def _unlink(self, file_nos: list[int]) -> None:
        for file_no in file_nos:
            with contextlib.suppress(FileNotFoundError):
                (self._dir / file_name(file_no)).unlink()
        _fsync_dir(self._dir)

    def _close_retired(self) -> None:
        fds, self._retired_fds = self._retired_fds, []
        for fd in fds:
            os.close(fd)

    # --- state --------------------------------------------------------------------------------
    def stats(self) -> JournalStats:
        pending = self._queue.qsize()
        return JournalStats(
            self._records, self._bytes, self._batches, self._fsyncs, len(self._read_fds), pending,
            None if self._failed is None else repr(self._failed),
            None if self._disk_error is None else str(self._disk_error), self._disk_errors,
        )

    @property
    def disk_error(self) -> OSError | None:
        """Why writes (other than deletes) are refused for now; None while the journal takes writes."""
        return self._disk_error

    @property
    def failed(self) -> bool:
        return self._failed is not None

    async def close(self) -> None:
        """Write and sync everything queued, stop the writer thread and close the files."""
        if self._closing:
            return
        self._closing = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._close_fds()

    async def abort(self) -> None:
        """Stop as a crash would: records queued but not yet being written are dropped (their futures fail
        with BookieUnavailable); a batch already being written may or may not reach the disk."""
        if self._closing:
            return
        self._closing = self._aborted = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._close_fds()

    def _close_fds(self) -> None:
        report_refusing(self._dir, None)
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
        self._retired_fds.extend(self._read_fds.values())
        self._read_fds.clear()
        if not self._reads_in_flight:  # else the last read in flight closes them
            self._close_retired()
