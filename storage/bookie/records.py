"""The bookie journal's record format and its scanner.

A record is a fixed 52-byte big-endian header and a payload (see docs/data-formats.md, "Bookie journal
format")::

    magic u32 "TLJ1" | kind u8 | flags u8 | reserved u16 | payload length u32 | ledger id u64 |
    entry id i64 | last-add-confirmed i64 | ledger length u64 | payload CRC-32C u32 | header CRC-32C u32

``scan_file`` replays the records of one journal file through a callback; how damage is told from a
torn tail is described on it and in storage/bookie/journal.py.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from storage.entry import entry_crc

log = logging.getLogger("storage.bookie.journal")

MAGIC = 0x544C4A31  # b"TLJ1"
_MAGIC_BYTES = MAGIC.to_bytes(4, "big")
_HEAD = struct.Struct(">IBBHIQqqQI")
_HCRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _HCRC.size  # 52


class RecordKind(IntEnum):
    """What a journal record says."""

    ENTRY = 1  # an entry of a ledger
    FENCE = 2  # the ledger is fenced: no more adds without the recovery flag
    DELETE = 3  # the ledger is deleted: its entries are gone


class JournalRecord(NamedTuple):
    """One durable record: its header fields and where its payload lies (``offset`` is the payload's)."""

    kind: RecordKind
    ledger_id: int
    entry_id: int
    lac: int
    ledger_length: int
    crc: int
    file_no: int
    offset: int
    size: int


Apply = Callable[[JournalRecord], None]


def file_name(file_no: int) -> str:
    return f"journal-{file_no:08d}.log"


def encode_header(
    kind: RecordKind, ledger_id: int, entry_id: int, lac: int, ledger_length: int, size: int, crc: int
) -> bytes:
    """The 52-byte record header (the payload CRC is given; the header CRC is computed here)."""
    head = _HEAD.pack(MAGIC, kind, 0, 0, size, ledger_id, entry_id, lac, ledger_length, crc)
    return head + _HCRC.pack(entry_crc(head))


def _parse(buf: memoryview, pos: int, end: int, file_no: int, verify: bool) -> JournalRecord | None:
    """The record at ``pos`` if it is whole and valid (payload CRC checked only when ``verify``)."""
    if pos + HEADER_SIZE > end:
        return None
    magic, kind, _flags, _res, size, ledger_id, entry_id, lac, length, crc = _HEAD.unpack_from(buf, pos)
    if magic != MAGIC:
        return None
    if entry_crc(buf[pos : pos + _HEAD.size]) != _HCRC.unpack_from(buf, pos + _HEAD.size)[0]:
        return None
    start = pos + HEADER_SIZE
    if kind not in (1, 2, 3) or start + size > end:
        return None
    if verify and entry_crc(buf[start : start + size]) != crc:
        return None
    return JournalRecord(RecordKind(kind), ledger_id, entry_id, lac, length, crc, file_no, start, size)


def scan_file(path: Path, file_no: int, tail: bool, apply: Apply, start: int = 0) -> int:
    """Replay the records of one file from ``start`` through ``apply``; returns the end of the last good one.

    ``tail``: this is the newest file, so payload CRCs are verified (a torn write can leave a whole header
    in front of a partly written payload) and a bad record that no valid record follows ends the scan (a
    torn tail). Otherwise damage is skipped by resynchronising on the next valid record; a damaged record
    with a valid header is still applied, so reads of it report the damage.
    """
    size = path.stat().st_size
    if size <= start:
        return start
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            pos = start
            while pos < size:
                rec = _parse(view, pos, size, file_no, tail)
                if rec is None:
                    nxt = _resync(mm, view, pos + 1, size, file_no, tail)
                    if tail and nxt is None:
                        break  # a torn tail: nothing valid after it
                    damaged = _parse(view, pos, size, file_no, False) if tail else None
                    if damaged is not None and (nxt is None or damaged.offset + damaged.size <= nxt):
                        log.warning(
                            "journal %s: entry %d:%d at offset %d fails its CRC-32C; kept so reads report it",
                            path, damaged.ledger_id, damaged.entry_id, pos,
                        )
                        apply(damaged)
                        pos = damaged.offset + damaged.size
                        continue
                    log.warning(
                        "journal %s: damaged record at offset %d, skipped %d bytes",
                        path, pos, (size if nxt is None else nxt) - pos,
                    )
                    if nxt is None:
                        pos = size
                        break
                    pos = nxt
                    continue
                apply(rec)
                pos = rec.offset + rec.size
        finally:
            view.release()
    return pos


def _resync(mm: mmap.mmap, view: memoryview, pos: int, end: int, file_no: int, verify: bool) -> int | None:
    """The next offset from ``pos`` holding a valid record (its payload CRC checked too when ``verify``)."""
    while True:
        pos = mm.find(_MAGIC_BYTES, pos, end)
        if pos < 0:
            return None
        if _parse(view, pos, end, file_no, verify) is not None:
            return pos
        pos += 1
