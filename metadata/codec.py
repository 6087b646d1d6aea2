"""On-disk formats of the embedded metadata store: the write-ahead log and the snapshot.

Write-ahead log (``wal``): a sequence of records, one per committed change::

    u32 big-endian payload length | u32 big-endian CRC-32C of payload | payload (msgpack)
    payload = [1, revision, [[key, value, lease_or_nil], ...], [deleted_key, ...]]

Revisions strictly increase from record to record. Only the last record can be torn (every record is
fsync'd before the next one is written), so a bad record at the tail is dropped; a bad record followed by
a good one is real corruption and opening refuses.

Snapshot (``snapshot``), replaced atomically (tmp file, fsync, rename, fsync dir)::

    b"TLMSNAP1" | u64 payload length | u32 CRC-32C of payload | payload (msgpack)
    payload = [1, revision, [[key, value, version, lease_or_nil], ...]]
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c
import msgpack

from metadata.api import MetadataError, Versioned

FORMAT_VERSION = 1
_RECORD_HEADER = struct.Struct(">II")
_SNAP_MAGIC = b"TLMSNAP1"
_SNAP_HEADER = struct.Struct(">8sQI")
MAX_RECORD = 256 * 1024 * 1024


class CorruptMetadata(MetadataError):
    """The on-disk metadata is damaged somewhere other than a torn tail; refusing to guess."""


@dataclass(frozen=True, slots=True)
class Record:
    """One committed change: every put and delete applied at ``revision``."""

    revision: int
    puts: tuple[tuple[str, bytes, int | None], ...]
    deletes: tuple[str, ...]


def encode_record(record: Record) -> bytes:
    """Frame one record for the write-ahead log."""
    payload = msgpack.packb(
        [FORMAT_VERSION, record.revision, [list(p) for p in record.puts], list(record.deletes)],
        use_bin_type=True,
    )
    return _RECORD_HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def _decode_payload(payload: bytes) -> Record:
    obj: Any = msgpack.unpackb(payload, raw=False)
    if not isinstance(obj, list) or len(obj) != 4 or obj[0] != FORMAT_VERSION:
        raise ValueError("unknown record format")
    _, revision, puts, deletes = obj
    return Record(
        revision=int(revision),
        puts=tuple((str(k), bytes(v), None if lease is None else int(lease)) for k, v, lease in puts),
        deletes=tuple(str(k) for k in deletes),
    )


def _record_at(buf: bytes, pos: int) -> tuple[Record, int] | None:
    """The record framed at ``pos`` and the offset after it, or None if it is not a valid record."""
    if pos + _RECORD_HEADER.size > len(buf):
        return None
    length, crc = _RECORD_HEADER.unpack_from(buf, pos)
    end = pos + _RECORD_HEADER.size + length
    if length > MAX_RECORD or end > len(buf):
        return None
    payload = buf[pos + _RECORD_HEADER.size : end]
    if crc32c.crc32c(payload) != crc:
        return None
    try:
        return _decode_payload(payload), end
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


def read_records(buf: bytes) -> tuple[list[Record], int]:
    """Decode a log image; returns the good records and the length of the good prefix.

    A torn or garbage tail is dropped. If a valid record with a higher revision follows a bad one, the
    damage is not a torn tail and ``CorruptMetadata`` is raised instead of silently dropping writes.
    """
    records: list[Record] = []
    pos = 0
    while pos < len(buf):
        found = _record_at(buf, pos)
        if found is None:
            break
        record, end = found
        if records and record.revision <= records[-1].revision:
            raise CorruptMetadata(f"metadata log revision went backwards at offset {pos}")
        records.append(record)
        pos = end
    last = records[-1].revision if records else 0
    for probe in range(pos + 1, len(buf)):
        later = _record_at(buf, probe)
        if later is not None and later[0].revision > last:
            raise CorruptMetadata(f"metadata log is damaged at offset {pos} but has good records after it")
    return records, pos


def iter_entries(entries: Any) -> Iterator[Versioned]:
    for key, value, version, lease in entries:
        yield Versioned(str(key), bytes(value), int(version), None if lease is None else int(lease))


def encode_snapshot(revision: int, entries: list[Versioned]) -> bytes:
    """Serialize the whole key space at ``revision``."""
    payload = msgpack.packb(
        [FORMAT_VERSION, revision, [[e.key, e.value, e.version, e.lease] for e in entries]],
        use_bin_type=True,
    )
    return _SNAP_HEADER.pack(_SNAP_MAGIC, len(payload), crc32c.crc32c(payload)) + payload


def decode_snapshot(buf: bytes) -> tuple[int, list[Versioned]]:
    """Parse a snapshot image; raises CorruptMetadata if it is damaged (it is written atomically)."""
    if len(buf) < _SNAP_HEADER.size:
        raise CorruptMetadata("metadata snapshot is truncated")
    magic, length, crc = _SNAP_HEADER.unpack_from(buf, 0)
    payload = buf[_SNAP_HEADER.size :]
    if magic != _SNAP_MAGIC or length != len(payload) or crc32c.crc32c(payload) != crc:
        raise CorruptMetadata("metadata snapshot failed its checksum")
    obj: Any = msgpack.unpackb(payload, raw=False)
    if not isinstance(obj, list) or len(obj) != 3 or obj[0] != FORMAT_VERSION:
        raise CorruptMetadata("unknown metadata snapshot format")
    return int(obj[1]), list(iter_entries(obj[2]))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old or the new file (never a mix)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class LogFile:
    """An append-only, fsync'd log file. Blocking: call from a worker thread."""

    def __init__(self, path: Path, good_length: int) -> None:
        existed = path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(self._fd).st_size != good_length:
            os.ftruncate(self._fd, good_length)  # drop a torn tail before anything is appended
            os.fsync(self._fd)
        if not existed:
            fsync_dir(path.parent)
        self.size = good_length
        self.broken = False

    def append(self, data: bytes) -> None:
        """Append and fsync; on failure the file is cut back so no partial record stays behind."""
        start = self.size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            except OSError:
                self.broken = True  # the tail may hold a partial record: nothing more may be appended
            raise
        self.size = start + len(data)

    def reset(self) -> None:
        """Empty the log (after a snapshot has durably captured everything in it)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.size = 0

    def close(self) -> None:
        os.close(self._fd)
