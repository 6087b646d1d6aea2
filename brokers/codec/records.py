"""Record-level decoding for the few paths that need it (ListOffsets by timestamp) — never the hot path.

Decodes each record's offset and timestamp from a v2 batch, decompressing with cramjam when needed.
"""

from __future__ import annotations

import cramjam

from brokers.codec.batch import HEADER_SIZE, TIMESTAMP_TYPE_FLAG, BatchHeader, CorruptBatch

_CODECS = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A zig-zag varint at ``pos``; returns (value, next position)."""
    shift = 0
    raw = 0
    while True:
        if pos >= len(buf):
            raise CorruptBatch("truncated varint")
        b = buf[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 63:
            raise CorruptBatch("varint too long")
    return (raw >> 1) ^ -(raw & 1), pos


def _decompress(codec: int, data: bytes | memoryview) -> bytes:
    name = _CODECS.get(codec)
    if name is None:
        raise CorruptBatch(f"unknown compression codec {codec}")
    if name == "gzip":
        return bytes(cramjam.gzip.decompress(bytes(data)))
    if name == "snappy":
        raw = bytes(data)
        if raw.startswith(b"\x82SNAPPY\x00"):  # xerial framing, as the Java client writes it
            out = bytearray()
            pos = 16
            while pos < len(raw):
                size = int.from_bytes(raw[pos : pos + 4], "big")
                out += bytes(cramjam.snappy.decompress_raw(raw[pos + 4 : pos + 4 + size]))
                pos += 4 + size
            return bytes(out)
        return bytes(cramjam.snappy.decompress_raw(raw))
    if name == "lz4":
        return bytes(cramjam.lz4.decompress(bytes(data)))
    return bytes(cramjam.zstd.decompress(bytes(data)))


def record_timestamps(batch: memoryview, head: BatchHeader) -> list[tuple[int, int]]:
    """(offset, timestamp) of every record in the batch at ``head``."""
    if head.attributes & TIMESTAMP_TYPE_FLAG:  # LogAppendTime: every record has the batch max
        return [(head.base_offset + i, head.max_timestamp) for i in range(head.record_span)]
    body: bytes | memoryview = batch[head.position + HEADER_SIZE : head.position + head.size]
    if head.compression:
        body = _decompress(head.compression, body)
    out: list[tuple[int, int]] = []
    pos = 0
    for _ in range(head.records_count):
        length, pos = read_varint(body, pos)
        end = pos + length
        pos += 1  # attributes
        ts_delta, pos = read_varint(body, pos)
        off_delta, pos = read_varint(body, pos)
        out.append((head.base_offset + off_delta, head.base_timestamp + ts_delta))
        pos = end
    return out
