"""The embedded MetadataStore: one process, in memory or durable in a local directory.

Durability: every committed change is one CRC-32C'd msgpack record appended to ``<dir>/wal`` and fsync'd
(in a worker thread) before the call returns; once the log passes ``compact_bytes`` the whole key space is
written to ``<dir>/snapshot`` (atomically) and the log is emptied. Opening loads the snapshot, replays the
log (dropping a torn tail left by a crash) and then deletes every key that was bound to a lease: leases
live only as long as the process that granted them, so after a restart they have all expired.

Disk full: the store keeps a reserve file (``<dir>/reserve``, metadata/disk_reserve.py). A log append that
fails for want of space releases it and is tried once more, so deletes (of topics, ledgers, segments) still
commit on a full disk and free space elsewhere; the reserve is written again, at most once a second on a
later write, once the disk has room. One log line when the reserve goes, one when it is back.

Watches are served from memory: live changes are pushed to each watch, and the last ``history_size``
events are kept so a watch can start from a recent revision (older ones raise RevisionCompacted).
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import logging
import os
import secrets
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from metadata import codec
from metadata.api import (
    MAX_COMMIT_OPS,
    Check,
    Event,
    EventKind,
    LeaseExpired,
    MetadataError,
    Put,
    RevisionCompacted,
    StoreUnavailable,
    VersionConflict,
    Versioned,
)
from metadata.dirlock import DirectoryLocked, lock_directory
from metadata.disk_reserve import DEFAULT_RESERVE_BYTES, DiskReserve, is_no_space, report_refusing

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HISTORY_SIZE = 10_000
DEFAULT_COMPACT_BYTES = 8 * 1024 * 1024
RESERVE_PROBE_S = 1.0  # how often a write tries to put the released reserve back
WATCH_BUFFER = 1024  # revisions queued per watch before it falls back to catching up from history


def _shielded(coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """Run ``coro`` to completion even if the caller is cancelled.

    A write whose record reached the log must also be applied in memory (else the next write would reuse
    its revision), and the write lock must stay held until then; a cancelled caller just stops waiting.
    """
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" noise
    return asyncio.shield(task)


class EmbeddedLease:
    """An embedded lease: alive until revoked, ``expire_lease``d, or the process ends."""

    def __init__(self, store: EmbeddedMetadataStore, lease_id: int, ttl: float) -> None:
        self._store = store
        self._id = lease_id
        self.ttl = ttl
        self._alive = True

    @property
    def id(self) -> int:
        return self._id

    @property
    def alive(self) -> bool:
        return self._alive

    async def revoke(self) -> None:
        """End the lease and delete every key bound to it (one revision, one delete event per key)."""
        await self._store.expire_lease(self._id)


class EmbeddedWatch:
    """Async iterator of Events under a prefix (see ``EmbeddedMetadataStore.watch``)."""

    def __init__(self, store: EmbeddedMetadataStore, prefix: str, from_revision: int | None) -> None:
        self._store = store
        self._prefix = prefix
        self._pending: deque[Event] = deque()
        self._buffer: deque[tuple[int, tuple[Event, ...]]] = deque()
        self._wake = asyncio.Event()
        self._error: MetadataError | None = None
        self._lagged = False  # the buffer overflowed: catch up from history when the consumer gets here
        self._closed = False
        if from_revision is None:
            self._through = store._revision  # every revision up to here is delivered or irrelevant
        else:
            if from_revision < 1:
                raise ValueError("from_revision must be >= 1 (or None for 'from now')")
            self._through = from_revision - 1
            self._catch_up()

    def __aiter__(self) -> EmbeddedWatch:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._error is not None:
                error, self._error = self._error, None
                self._closed = True
                raise error
            if self._lagged:
                self._catch_up()
                continue
            if self._buffer:
                revision, events = self._buffer.popleft()
                if revision > self._through:
                    self._pending.extend(events)
                    self._through = revision
                continue
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    async def aclose(self) -> None:
        """Stop watching; the iterator ends."""
        self._close()
        self._pending.clear()

    def _catch_up(self) -> None:
        """Refill from the store's history everything after ``_through`` (after creation or a lag)."""
        self._buffer.clear()
        self._lagged = False
        try:
            events = self._store._history_since(self._through + 1)
        except RevisionCompacted as e:
            self._error = e
            self._wake.set()
            return
        self._pending.extend(e for e in events if e.key.startswith(self._prefix))
        self._through = max(self._through, self._store._revision)

    def _offer(self, revision: int, events: Sequence[Event]) -> None:
        """Called by the store right after a change is durable and applied."""
        if self._closed or self._lagged or self._error is not None:
            return
        matching = tuple(e for e in events if e.key.startswith(self._prefix))
        if not matching:
            return
        if len(self._buffer) >= WATCH_BUFFER:
            # The consumer is far behind: drop the buffer; it re-reads from history when it gets here
            # (same order, no gaps), or gets RevisionCompacted if the history moved past it meanwhile.
            self._lagged = True
            self._buffer.clear()
        else:
            self._buffer.append((revision, matching))
        self._wake.set()

    def _close(self) -> None:
        self._closed = True
        self._buffer.clear()
        self._store._watches.discard(self)
        self._wake.set()


class EmbeddedMetadataStore:
    """MetadataStore for a single process. Create with ``await EmbeddedMetadataStore.open(path)``."""

    def __init__(self, directory: Path | None, history_size: int, compact_bytes: int, reserve_bytes: int) -> None:
        self._dir = directory
        self._reserve = None if directory is None else DiskReserve(directory / "reserve", reserve_bytes)
        self._reserve_out = False  # released for a full disk and not yet written again
        self._reserve_probe_at = 0.0
        self._history_size = history_size
        self._compact_bytes = compact_bytes
        self._data: dict[str, Versioned] = {}
        self._keys: builtins.list[str] = []  # sorted
        self._revision = 0
        self._leases: dict[int, EmbeddedLease] = {}
        self._lease_keys: dict[int, set[str]] = {}
        self._history: deque[Event] = deque()
        self._history_floor = 1  # every event with revision >= floor is in _history
        self._watches: weakref.WeakSet[EmbeddedWatch] = weakref.WeakSet()
        self._lock = asyncio.Lock()
        self._log: codec.LogFile | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self._loading = False  # replaying: _keys is rebuilt once at the end
        self._compact_at = compact_bytes

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str] | None,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        compact_bytes: int = DEFAULT_COMPACT_BYTES,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> EmbeddedMetadataStore:
        """Open (creating if needed) the store in directory ``path``; ``None`` keeps it only in memory.

        ``history_size`` events are kept for watches from a past revision; the log is compacted into a
        snapshot once it exceeds ``compact_bytes``. Only one process (and one store) may hold a directory.
        """
        if history_size < 1:
            raise ValueError("history_size must be >= 1")
        store = cls(None if path is None else Path(path), history_size, compact_bytes, reserve_bytes)
        if store._dir is None:
            return store
        try:
            await asyncio.to_thread(store._load)
            store._keys = sorted(store._data)
            leased = [key for key in store._keys if store._data[key].lease is not None]
            if leased:  # their leases died with the process that granted them
                await store._write((), (), leased)
            store._lease_keys.clear()
        except BaseException:
            await store.close()  # release the directory lock
            raise
        return store

    # --- reads --------------------------------------------------------------------------------
    async def get(self, key: str) -> Versioned | None:
        """The value of ``key`` and the revision that last modified it, or None."""
        self._check_open()
        return self._data.get(key)

    async def revision(self) -> int:
        """The store's current revision (0 for a new store)."""
        self._check_open()
        return self._revision

    # --- writes -------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, expected_version: int | None = None, lease: int | None = None) -> int:
        """Write ``value``; returns the new version. Raises VersionConflict or LeaseExpired."""
        checks = () if expected_version is None else (Check(key, expected_version),)
        revision, _ = await self._write(checks, (Put(key, value, lease),), ())
        return revision

    async def delete(self, key: str, expected_version: int | None = None) -> bool:
        """Delete ``key``; returns whether it existed. Raises VersionConflict if the check fails."""
        checks = () if expected_version is None else (Check(key, expected_version),)
        _, deleted = await self._write(checks, (), (key,))
        return bool(deleted)

    async def commit(self, checks: Sequence[Check], puts: Sequence[Put], deletes: Sequence[str] = ()) -> int:
        """Apply puts and deletes atomically if every check holds; returns the revision after it.

        A commit that changes nothing (no puts, only absent keys deleted) returns the current revision.
        """
        keys = [p.key for p in puts] + builtins.list(deletes)
        if len(set(keys)) != len(keys):
            raise ValueError("a key may appear only once among the puts and deletes of one commit")
        if len(keys) > MAX_COMMIT_OPS or len(checks) > MAX_COMMIT_OPS:
            raise ValueError(f"a commit takes at most {MAX_COMMIT_OPS} checks and {MAX_COMMIT_OPS} puts + deletes")
        revision, _ = await self._write(checks, puts, deletes)
        return revision

    # --- leases -------------------------------------------------------------------------------
    async def lease(self, ttl: float) -> EmbeddedLease:
        """Grant a lease; it stays alive until revoked, ``expire_lease``, close, or process exit."""
        self._check_open()
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        lease_id = secrets.randbits(62) + 1
        while lease_id in self._leases or lease_id in self._lease_keys:
            lease_id = secrets.randbits(62) + 1
        lease = EmbeddedLease(self, lease_id, ttl)
        self._leases[lease_id] = lease
        return lease

    async def expire_lease(self, lease_id: int) -> None:
        """End a lease as if its holder had died: bound keys are deleted. Idempotent. (Tests use this.)"""
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            lease._alive = False  # from here on, puts naming it raise LeaseExpired

        async def delete_bound_keys() -> None:
            async with self._lock:
                keys = self._lease_keys.get(lease_id)
                if keys and not self._closed:
                    await self._write_locked((), (), sorted(keys))
                self._lease_keys.pop(lease_id, None)

        await _shielded(delete_bound_keys())

    # --- watches ------------------------------------------------------------------------------
    def watch(self, prefix: str, from_revision: int | None = None) -> EmbeddedWatch:
        """Changes under ``prefix`` from ``from_revision`` (inclusive), or from now when None.

        History is kept for the last ``history_size`` events (after a restart: back to the last
        snapshot). A ``from_revision`` older than that makes the iterator raise RevisionCompacted.
        A consumer that falls far behind is caught up from that same history. Ends on ``close``.
        """
        self._check_open()
        watch = EmbeddedWatch(self, prefix, from_revision)
        self._watches.add(watch)
        return watch

    def _history_since(self, revision: int) -> builtins.list[Event]:
        if revision < self._history_floor:
            raise RevisionCompacted(revision, self._history_floor)
        found: builtins.list[Event] = []
        for event in reversed(self._history):
            if event.revision < revision:
                break
            found.append(event)
        found.reverse()
        return found

    # --- listing (defined late: the method name shadows the builtin in this class body) ---------
    async def list(self, prefix: str) -> builtins.list[Versioned]:
        """All keys starting with ``prefix`` (plain string prefix), sorted by key."""
        self._check_open()
        found: builtins.list[Versioned] = []
        for i in range(bisect.bisect_left(self._keys, prefix), len(self._keys)):
            key = self._keys[i]
            if not key.startswith(prefix):
                break
            found.append(self._data[key])
        return found

    # --- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the log and release the directory. Watches end; leases die (keys go on next open)."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._log is not None:
                await asyncio.to_thread(self._log.close)
                self._log = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
            for watch in builtins.list(self._watches):
                watch._close()
            for lease in self._leases.values():
                lease._alive = False
            self._leases.clear()

    @property
    def path(self) -> Path | None:
        """The store's directory, or None in memory."""
        return self._dir

    # --- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise MetadataError("metadata store is closed")

    async def _write(
        self, checks: Sequence[Check], puts: Sequence[Put], deletes: Sequence[str]
    ) -> tuple[int, builtins.list[str]]:
        async def locked() -> tuple[int, builtins.list[str]]:
            async with self._lock:
                return await self._write_locked(checks, puts, deletes)

        return await _shielded(locked())

    async def _write_locked(
        self, checks: Sequence[Check], puts: Sequence[Put], deletes: Sequence[str]
    ) -> tuple[int, builtins.list[str]]:
        """Validate, make durable, apply, notify. Returns (revision, keys actually deleted)."""
        self._check_open()
        if self._log is not None and self._log.broken:
            raise StoreUnavailable("metadata log could not be repaired after a write error; reopen the store")
        for check in checks:
            current = self._data.get(check.key)
            actual = 0 if current is None else current.version
            if actual != check.version:
                raise VersionConflict(f"{check.key}: expected version {check.version}, found {actual}")
        for put in puts:
            if not isinstance(put.value, bytes | bytearray | memoryview):
                raise TypeError(f"value of {put.key} must be bytes")
            if put.lease is not None and put.lease not in self._leases:
                raise LeaseExpired(f"lease {put.lease} does not exist (revoked or expired)")
        present = [key for key in deletes if key in self._data]
        if not puts and not present:
            return self._revision, []
        record = codec.Record(self._revision + 1, tuple((p.key, bytes(p.value), p.lease) for p in puts), tuple(present))
        if self._log is not None:
            try:
                await asyncio.to_thread(self._append, self._log, codec.encode_record(record))
            except OSError as e:
                raise StoreUnavailable(f"metadata log write failed: {e}") from e
        events = self._apply(record)
        for watch in builtins.list(self._watches):
            watch._offer(record.revision, events)
        if self._log is not None and self._log.size > self._compact_at:
            await self._compact()
        return record.revision, present

    @property
    def disk_full(self) -> bool:
        """Whether the reserve was given up for a full disk and is not back yet."""
        return self._reserve_out

    def _append(self, log_file: codec.LogFile, data: bytes) -> None:
        """Blocking: append a record; on a full disk give up the reserve and try once more."""
        reserve = self._reserve
        try:
            log_file.append(data)
        except OSError as e:
            if reserve is None or log_file.broken or not is_no_space(e) or not reserve.release():
                raise
            self._reserve_out = True
            self._reserve_probe_at = time.monotonic() + RESERVE_PROBE_S
            report_refusing(reserve.path.parent, str(e))
            log.error("metadata store %s: disk full; reserve file released so deletes can still commit", self._dir)
            log_file.append(data)
            return
        if self._reserve_out and reserve is not None and time.monotonic() >= self._reserve_probe_at:
            self._reserve_probe_at = time.monotonic() + RESERVE_PROBE_S
            try:
                back = reserve.restore(margin=reserve.size)
            except OSError:
                back = False
            if back:
                self._reserve_out = False
                report_refusing(reserve.path.parent, None)
                log.warning("metadata store %s: disk has room again; reserve file restored", self._dir)

    def _apply(self, record: codec.Record) -> builtins.list[Event]:
        """Apply a durable record to memory and history (also used by replay, before _keys is built)."""
        revision = record.revision
        events: builtins.list[Event] = []
        for key, value, lease in record.puts:
            old = self._data.get(key)
            if old is None:
                if not self._loading:
                    bisect.insort(self._keys, key)
            elif old.lease is not None:
                self._lease_keys.get(old.lease, set()).discard(key)
            if lease is not None:
                self._lease_keys.setdefault(lease, set()).add(key)
            self._data[key] = Versioned(key, value, revision, lease)
            events.append(Event(EventKind.PUT, key, value, revision))
        for key in record.deletes:
            old = self._data.pop(key)
            if not self._loading:
                del self._keys[bisect.bisect_left(self._keys, key)]
            if old.lease is not None:
                self._lease_keys.get(old.lease, set()).discard(key)
            events.append(Event(EventKind.DELETE, key, None, revision))
        self._revision = revision
        self._history.extend(events)
        while len(self._history) > self._history_size:
            self._history_floor = self._history.popleft().revision + 1
        return events

    def _load(self) -> None:
        """Blocking: lock the directory, load the snapshot, replay the log, open it for appending."""
        assert self._dir is not None  # noqa: S101
        try:
            self._lock_fd = lock_directory(self._dir, "metadata store")
        except DirectoryLocked as e:
            self._lock_fd = None
            raise MetadataError(f"metadata directory: {e}") from None
        with contextlib.suppress(FileNotFoundError):
            (self._dir / "snapshot.tmp").unlink()
        snapshot = self._dir / "snapshot"
        if snapshot.exists():
            self._revision, entries = codec.decode_snapshot(snapshot.read_bytes())
            self._data = {e.key: e for e in entries}
            self._history_floor = self._revision + 1
        wal = self._dir / "wal"
        records, good = codec.read_records(wal.read_bytes() if wal.exists() else b"")
        if wal.exists() and wal.stat().st_size != good:
            log.warning("metadata log %s: dropping a torn tail of %d bytes", wal, wal.stat().st_size - good)
        self._loading = True
        try:
            for record in records:
                if record.revision > self._revision:
                    self._apply(record)
        finally:
            self._loading = False
        self._log = codec.LogFile(wal, good)
        if self._reserve is not None:
            try:
                self._reserve.ensure()
            except OSError as e:  # opened on a full disk: no reserve until a write finds room for it
                self._reserve.release()
                self._reserve_out = True
                log.error("metadata store %s: cannot write the reserve file (%s)", self._dir, e)

    async def _compact(self) -> None:
        """Snapshot the key space and empty the log (called under the write lock)."""
        assert self._dir is not None and self._log is not None  # noqa: S101
        image = builtins.list(self._data.values())
        snapshot, log_file, revision = self._dir / "snapshot", self._log, self._revision

        def work() -> None:
            codec.write_file_atomically(snapshot, codec.encode_snapshot(revision, image))
            log_file.reset()

        try:
            await asyncio.to_thread(work)
            self._compact_at = self._compact_bytes
        except OSError as e:
            # Nothing is lost (the log still holds every record); try again after more growth.
            log.warning("metadata snapshot failed (%s); will retry after %d more bytes of log", e, self._compact_bytes)
            self._compact_at = log_file.size + self._compact_bytes
