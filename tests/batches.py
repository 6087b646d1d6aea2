"""Hand-built Kafka v2 record batches for unit tests."""

from __future__ import annotations

import struct

import crc32c


def make_batch(records: int = 3, base_ts: int = 1_000, producer_id: int = -1, base_seq: int = -1) -> bytes:
    """A valid uncompressed v2 batch with ``records`` small records (timestamps base_ts + i)."""
    body = bytearray()
    for i in range(records):
        rec = bytearray([0])  # attributes
        rec += _varint(i)  # timestamp delta
        rec += _varint(i)  # offset delta
        rec += _varint(-1)  # null key
        value = f"v{i}".encode()
        rec += _varint(len(value)) + value
        rec += _varint(0)  # headers
        body += _varint(len(rec)) + rec
    after_crc = struct.pack(">hiqqqhii", 0, records - 1, base_ts, base_ts + records - 1, producer_id, 0, base_seq,
                            records) + body
    crc = crc32c.crc32c(after_crc)
    head = struct.pack(">qiibI", 0, 4 + 1 + 4 + len(after_crc), -1, 2, crc)
    return head + after_crc


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)
