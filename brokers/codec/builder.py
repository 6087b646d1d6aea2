"""Kafka v2 record batches for records the broker writes itself (``__consumer_offsets``), and reading them back.

Sans-io. Building: uncompressed, no producer id, no headers, one CRC-32C over attributes..end, offsets
relative to 0 (the partition log patches the base offset on append). Reading (``iter_records``) decodes each
record's offset delta, key and value — used only to replay internal topics, never on the produce/fetch path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import crc32c

from brokers.codec.batch import HEADER_SIZE, LOG_OVERHEAD, BatchHeader, CorruptBatch
from brokers.codec.records import _decompress, read_varint

_AFTER_CRC = struct.Struct(">hiqqqhii")  # attributes .. records count
_BEFORE_CRC = struct.Struct(">qiibI")  # base offset, batch length, leader epoch, magic, crc
MAX_RECORDS_PER_BATCH = 100_000


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One record read back from a batch: its absolute offset, timestamp, key and value (None = null)."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def varint(n: int) -> bytes:
    """Zig-zag varint, as Kafka record fields use."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _record(offset_delta: int, key: bytes | None, value: bytes | None) -> bytes:
    body = bytearray(b"\x00")  # attributes
    body += b"\x00"  # timestamp delta 0: every record carries the batch timestamp
    body += varint(offset_delta)
    if key is None:
        body += b"\x01"  # varint(-1)
    else:
        body += varint(len(key))
        body += key
    if value is None:
        body += b"\x01"
    else:
        body += varint(len(value))
        body += value
    body += b"\x00"  # no headers
    return varint(len(body)) + bytes(body)


def build_batch(
    records: Sequence[tuple[bytes | None, bytes | None]], timestamp_ms: int,
    producer_id: int = -1, producer_epoch: int = -1, attributes: int = 0,
) -> bytes:
    """One uncompressed v2 batch holding ``records`` (key, value) in order, all stamped ``timestamp_ms``.

    ``producer_id``/``producer_epoch`` and ``attributes`` (e.g. the transactional flag) are for the batches a
    coordinator writes on a producer's behalf (TxnOffsetCommit): base sequence -1, as Kafka writes them.
    """
    if not records:
        raise ValueError("a record batch needs at least one record")
    if len(records) > MAX_RECORDS_PER_BATCH:
        raise ValueError(f"{len(records)} records in one batch; at most {MAX_RECORDS_PER_BATCH}")
    body = b"".join(_record(i, k, v) for i, (k, v) in enumerate(records))
    after_crc = _AFTER_CRC.pack(
        attributes, len(records) - 1, timestamp_ms, timestamp_ms, producer_id, producer_epoch, -1, len(records)
    ) + body
    crc = crc32c.crc32c(after_crc)
    head = _BEFORE_CRC.pack(0, len(after_crc) + 9, -1, 2, crc)  # length counts epoch, magic, crc too
    return head + after_crc


def build_batches(
    records: Sequence[tuple[bytes | None, bytes | None]], timestamp_ms: int, max_bytes: int
) -> list[bytes]:
    """``records`` split into batches of about ``max_bytes`` each (a record larger than that gets its own)."""
    out: list[bytes] = []
    start = 0
    size = 0
    for i, (k, v) in enumerate(records):
        approx = 16 + (len(k) if k else 0) + (len(v) if v else 0)
        if i > start and (size + approx > max_bytes or i - start >= MAX_RECORDS_PER_BATCH):
            out.append(build_batch(records[start:i], timestamp_ms))
            start, size = i, 0
        size += approx
    if start < len(records):
        out.append(build_batch(records[start:], timestamp_ms))
    return out


def _bytes_field(body: bytes | memoryview, pos: int) -> tuple[bytes | None, int]:
    length, pos = read_varint(body, pos)
    if length < 0:
        return None, pos
    end = pos + length
    if end > len(body):
        raise CorruptBatch("record field runs past the end of the batch")
    return bytes(body[pos:end]), end


def iter_records(buf: bytes | memoryview, head: BatchHeader) -> Iterator[KeyValue]:
    """Every record of the batch at ``head`` in ``buf``; raises CorruptBatch on malformed records."""
    body: bytes | memoryview = memoryview(buf)[head.position + HEADER_SIZE : head.position + head.size]
    if head.compression:
        body = _decompress(head.compression, body)
    pos = 0
    for _ in range(head.records_count):
        length, pos = read_varint(body, pos)
        end = pos + length
        if length < 0 or end > len(body):
            raise CorruptBatch("record length runs past the end of the batch")
        pos += 1  # attributes
        ts_delta, pos = read_varint(body, pos)
        off_delta, pos = read_varint(body, pos)
        key, pos = _bytes_field(body, pos)
        value, pos = _bytes_field(body, pos)
        if pos > end:
            raise CorruptBatch("record fields run past the record length")
        yield KeyValue(head.base_offset + off_delta, head.base_timestamp + ts_delta, key, value)
        pos = end


def batch_size(batch: bytes) -> int:
    """Total bytes of the batch at the start of ``batch`` (from its length field)."""
    return LOG_OVERHEAD + int.from_bytes(batch[8:12], "big")
