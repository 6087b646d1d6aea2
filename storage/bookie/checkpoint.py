"""Index checkpoints: the bookie's index stored with the journal position it reflects.

At start-up the bookie loads the checkpoint and replays only the journal after its position, instead of
every journal file. The file (``<data_dir>/index.checkpoint``, replaced atomically: written to a temporary
name, fsync'd, renamed, directory fsync'd) is::

    magic "TLIX" | version u32 | body length u64 | body CRC-32C u32 | body (a msgpack map)

The body's entry locations are stored column by column as little-endian 64-bit arrays, so writing and
loading millions of entries costs a few array conversions, not a Python object per field. Format in
docs/data-formats.md ("Index checkpoint"). A checkpoint that is missing, damaged, of another version or of
another bookie is ignored (``CheckpointError``): the bookie then rescans the whole journal.
"""

from __future__ import annotations

import array
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from storage.bookie.index import EntryLocation, IndexSnapshot
from storage.entry import entry_crc

MAGIC = b"TLIX"
VERSION = 1
FILE_NAME = "index.checkpoint"
_HEAD = struct.Struct(">4sIQI")
_COLUMNS = 7  # entry id, file, offset, size, crc, ledger length, lac
_TYPES = ("Q", "Q", "Q", "Q", "Q", "Q", "q")
_SWAP = sys.byteorder != "little"


class CheckpointError(Exception):
    """The checkpoint cannot be used (damaged, another version or bookie); rescan the journal instead."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The index as of journal position (``file_no``, ``offset``): every record before it is reflected."""

    bookie_id: str
    file_no: int
    offset: int
    index: IndexSnapshot


def _column(kind: str, values: Any) -> bytes:
    col = array.array(kind, values)
    if _SWAP:
        col.byteswap()
    return col.tobytes()


def _from_column(kind: str, data: memoryview) -> array.array[int]:
    col = array.array(kind)
    col.frombytes(data)
    if _SWAP:
        col.byteswap()
    return col


def _encode_entries(entries: dict[int, EntryLocation]) -> bytes:
    if not entries:
        return b""
    columns = list(zip(*entries.values(), strict=True))  # file, offset, size, crc, ledger length, lac
    parts = [_column(_TYPES[0], entries.keys())]
    parts.extend(_column(kind, col) for kind, col in zip(_TYPES[1:], columns, strict=True))
    return b"".join(parts)


def _decode_entries(count: int, blob: bytes) -> dict[int, EntryLocation]:
    if len(blob) != count * 8 * _COLUMNS:
        raise CheckpointError(f"entry columns hold {len(blob)} bytes, expected {count * 8 * _COLUMNS}")
    if not count:
        return {}
    view = memoryview(blob)
    cols = [_from_column(kind, view[i * count * 8 : (i + 1) * count * 8]) for i, kind in enumerate(_TYPES)]
    return dict(zip(cols[0], map(EntryLocation, *cols[1:]), strict=True))


def encode(cp: Checkpoint) -> bytes:
    """The checkpoint file's bytes."""
    snap = cp.index
    body = msgpack.packb(
        {
            "bookie": cp.bookie_id,
            "file": cp.file_no,
            "offset": cp.offset,
            "ledgers": [
                [ledger_id, lac, fenced, fence_file, len(entries), _encode_entries(entries)]
                for ledger_id, lac, fenced, fence_file, entries in snap.ledgers
            ],
            "deleted": _column("Q", snap.deleted),
            "file_ledgers": [[f, _column("Q", v)] for f, v in snap.file_ledgers.items()],
            "file_deletes": [[f, _column("Q", v)] for f, v in snap.file_deletes.items()],
            "file_size": [[f, n] for f, n in snap.file_size.items()],
        },
        use_bin_type=True,
    )
    return _HEAD.pack(MAGIC, VERSION, len(body), entry_crc(body)) + body


def decode(data: bytes) -> Checkpoint:
    """The checkpoint in ``data``; CheckpointError if it is not a whole, valid one."""
    if len(data) < _HEAD.size:
        raise CheckpointError("checkpoint file is shorter than its header")
    magic, version, length, crc = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"bad checkpoint magic {magic!r}")
    if version != VERSION:
        raise CheckpointError(f"checkpoint format version {version} is not {VERSION}")
    body = memoryview(data)[_HEAD.size :]
    if len(body) != length or entry_crc(body) != crc:
        raise CheckpointError("checkpoint body is truncated or fails its CRC-32C")
    try:
        d = msgpack.unpackb(body, raw=False, strict_map_key=False)
        ledgers = [
            (int(lid), int(lac), bool(fenced), int(fence_file), _decode_entries(int(n), blob))
            for lid, lac, fenced, fence_file, n, blob in d["ledgers"]
        ]
        snap = IndexSnapshot(
            ledgers=ledgers,
            deleted=list(_from_column("Q", memoryview(d["deleted"]))),
            file_ledgers={int(f): list(_from_column("Q", memoryview(v))) for f, v in d["file_ledgers"]},
            file_deletes={int(f): list(_from_column("Q", memoryview(v))) for f, v in d["file_deletes"]},
            file_size={int(f): int(n) for f, n in d["file_size"]},
        )
        return Checkpoint(str(d["bookie"]), int(d["file"]), int(d["offset"]), snap)
    except CheckpointError:
        raise
    except Exception as exc:  # a body that passed its CRC but not its schema: written by something else
        raise CheckpointError(f"unreadable checkpoint body: {exc!r}") from exc


def path_in(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def write(data_dir: Path, cp: Checkpoint) -> int:
    """Replace the checkpoint atomically and durably (blocking: call in a thread); returns its size."""
    data = encode(cp)
    target = path_in(data_dir)
    tmp = target.with_name(FILE_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        tmp.unlink(missing_ok=True)  # a disk full midway: leave no partial file taking space
        raise
    finally:
        os.close(fd)
    os.replace(tmp, target)
    dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


def read(data_dir: Path) -> Checkpoint | None:
    """The stored checkpoint, None if there is none; CheckpointError if it is unusable (blocking)."""
    try:
        data = path_in(data_dir).read_bytes()
    except FileNotFoundError:
        return None
    return decode(data)


def remove(data_dir: Path) -> None:
    """Delete the checkpoint (the next start rescans the whole journal)."""
    path_in(data_dir).unlink(missing_ok=True)
