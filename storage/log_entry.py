"""The ledger entry of a partition log: a small header, then Kafka record batches byte-for-byte.

Header (big-endian, 52 bytes): magic b"TL", version u8, flags u8, first_offset i64, last_offset i64,
max_timestamp i64, producer_id i64, producer_epoch i16, base_sequence i32, last_sequence i32,
batch_count i16, crc32c u32 of the batches. Storage reads only this header; batches stay opaque.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c

MAGIC = b"TL"
VERSION = 1
_HEAD = struct.Struct(">2sBBqqqqhiihI")
HEADER_SIZE = _HEAD.size


class CorruptLogEntry(Exception):
    """An entry whose header or checksum does not hold."""


@dataclass(frozen=True, slots=True)
class EntryHeader:
    """What storage knows of an entry without looking inside its batches."""

    first_offset: int
    last_offset: int
    max_timestamp: int
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    last_sequence: int = -1
    batch_count: int = 1


def allocate(batches: bytes | bytearray | memoryview) -> bytearray:
    """A buffer holding room for the header, then a copy of ``batches`` (the one copy made).

    Patch the batches in place (they start at ``HEADER_SIZE``), then ``seal`` the header.
    """
    buf = bytearray(HEADER_SIZE)
    buf += batches  # grows once to the exact size: no zero-filling of the batches' room first (half the cost)
    return buf


def seal(buf: bytearray, head: EntryHeader) -> None:
    """Write the header (with the CRC-32C of the batches) into a buffer from ``allocate``."""
    crc = crc32c.crc32c(memoryview(buf)[HEADER_SIZE:])
    _HEAD.pack_into(
        buf,
        0,
        MAGIC,
        VERSION,
        0,
        head.first_offset,
        head.last_offset,
        head.max_timestamp,
        head.producer_id,
        head.producer_epoch,
        head.base_sequence,
        head.last_sequence,
        head.batch_count,
        crc,
    )


def encode(head: EntryHeader, batches: bytes | bytearray | memoryview) -> bytes:
    """The entry: header then the batches."""
    buf = allocate(batches)
    seal(buf, head)
    return bytes(buf)


def decode_header(entry: bytes | memoryview) -> EntryHeader:
    """Parse an entry's header (checksum not verified; see ``verify``)."""
    if len(entry) < HEADER_SIZE:
        raise CorruptLogEntry(f"entry of {len(entry)} bytes is shorter than its header")
    magic, version, _flags, first, last, max_ts, pid, epoch, bseq, lseq, count, _crc = _HEAD.unpack_from(
        entry, 0
    )
    if magic != MAGIC or version != VERSION:
        raise CorruptLogEntry(f"bad entry magic/version {magic!r}/{version}")
    return EntryHeader(first, last, max_ts, pid, epoch, bseq, lseq, count)


def batches_of(entry: bytes | bytearray | memoryview) -> memoryview:
    """The record batches inside an entry, without copying."""
    return memoryview(entry)[HEADER_SIZE:]


def verify(entry: bytes | memoryview) -> None:
    """Check the entry's CRC-32C over its batches; raises CorruptLogEntry."""
    decode_header(entry)
    (crc,) = struct.unpack_from(">I", entry, HEADER_SIZE - 4)
    if crc32c.crc32c(memoryview(entry)[HEADER_SIZE:]) != crc:
        raise CorruptLogEntry("entry checksum mismatch")
