"""Kafka v2 record batches seen only through their 61-byte header — records stay opaque bytes.

Layout (big-endian): baseOffset i64 @0, batchLength i32 @8, partitionLeaderEpoch i32 @12, magic i8 @16,
crc u32 @17 (CRC-32C of bytes 21..end), attributes i16 @21, lastOffsetDelta i32 @23,
baseTimestamp i64 @27, maxTimestamp i64 @35, producerId i64 @43, producerEpoch i16 @51,
baseSequence i32 @53, recordsCount i32 @57, records @61.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import crc32c

HEADER_SIZE = 61
LOG_OVERHEAD = 12  # baseOffset + batchLength: batchLength counts the bytes after it
_HEAD = struct.Struct(">qiibIhiqqqhii")
_OFFSET = struct.Struct(">q")
_EPOCH = struct.Struct(">i")
TRANSACTIONAL_FLAG = 0x10
CONTROL_FLAG = 0x20
COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_FLAG = 0x08


class BatchError(Exception):
    """Base class of record batch validation errors."""


class CorruptBatch(BatchError):
    """Bad framing, bad magic or a CRC mismatch (Kafka error CORRUPT_MESSAGE)."""


class UnsupportedMagic(BatchError):
    """A message format older than v2 (Kafka error UNSUPPORTED_FOR_MESSAGE_FORMAT)."""


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The parsed header of one record batch and where it sits in its buffer."""

    position: int
    size: int
    base_offset: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def record_span(self) -> int:
        """How many offsets the batch covers."""
        return self.last_offset_delta + 1

    @property
    def last_sequence(self) -> int:
        if self.base_sequence < 0:
            return -1
        return (self.base_sequence + self.last_offset_delta) % 0x80000000

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_FLAG)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_FLAG)

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK


def read_header(buf: bytes | bytearray | memoryview, position: int) -> BatchHeader:
    """Parse the header at ``position``; raises CorruptBatch if it does not fit in ``buf``."""
    if len(buf) - position < HEADER_SIZE:
        if len(buf) - position >= 17 and buf[position + 16] != 2:
            raise UnsupportedMagic(f"message format v{buf[position + 16]} (only v2 is supported)")
        raise CorruptBatch(f"{len(buf) - position} bytes left, a batch header needs {HEADER_SIZE}")
    fields = _HEAD.unpack_from(buf, position)
    size = LOG_OVERHEAD + fields[1]
    return BatchHeader(position, size, fields[0], *fields[2:])


def iter_headers(buf: bytes | bytearray | memoryview) -> list[BatchHeader]:
    """Headers of every batch in ``buf`` with framing checked (not CRCs). Raises BatchError."""
    headers: list[BatchHeader] = []
    pos = 0
    end = len(buf)
    while pos < end:
        head = read_header(buf, pos)
        if head.magic != 2:
            raise UnsupportedMagic(f"message format v{head.magic} (only v2 is supported)")
        if head.size < HEADER_SIZE or pos + head.size > end:
            raise CorruptBatch(f"batch at byte {pos} claims {head.size} bytes, {end - pos} remain")
        if head.last_offset_delta < 0 or head.records_count < 0:
            raise CorruptBatch(f"batch at byte {pos} has a negative record count")
        headers.append(head)
        pos += head.size
    return headers


def validate(buf: bytes | bytearray | memoryview) -> list[BatchHeader]:
    """Framing, magic and CRC-32C of every batch; returns their headers. Raises BatchError."""
    headers = iter_headers(buf)
    view = memoryview(buf)
    for head in headers:
        actual = crc32c.crc32c(view[head.position + 21 : head.position + head.size])
        if actual != head.crc:
            raise CorruptBatch(f"batch at byte {head.position}: CRC {actual:#010x}, header says {head.crc:#010x}")
    if not headers:
        raise CorruptBatch("no record batch in the records field")
    return headers


def assign_offsets(
    buf: bytearray, headers: list[BatchHeader], base_offset: int, leader_epoch: int, shift: int = 0
) -> int:
    """Patch base offset and partition leader epoch in place (the CRC does not cover them).

    The batches start ``shift`` bytes into ``buf``. Returns the offset after the last record.
    """
    next_offset = base_offset
    for head in headers:
        _OFFSET.pack_into(buf, shift + head.position, next_offset)
        _EPOCH.pack_into(buf, shift + head.position + 12, leader_epoch)
        next_offset += head.record_span
    return next_offset


_ATTRIBUTES = struct.Struct(">h")
_TIMESTAMP = struct.Struct(">q")
_CRC = struct.Struct(">I")


def restamp(buf: bytearray, head: BatchHeader, attributes: int, max_timestamp: int) -> BatchHeader:
    """Rewrite the attributes and max timestamp of the batch at ``head`` in ``buf`` and its CRC-32C.

    As Kafka's ``setMaxTimestamp``: a LogAppendTime topic stamps the broker's time, and a CreateTime
    batch whose header claims another maximum than its records carry gets the records' one.
    """
    pos = head.position
    _ATTRIBUTES.pack_into(buf, pos + 21, attributes)
    _TIMESTAMP.pack_into(buf, pos + 35, max_timestamp)
    crc = crc32c.crc32c(memoryview(buf)[pos + 21 : pos + head.size])
    _CRC.pack_into(buf, pos + 17, crc)
    return replace(head, attributes=attributes, max_timestamp=max_timestamp, crc=crc)
