"""Kafka v2 record batches and ledger entries with real offsets, timestamps and producer fields, for tests
and benchmarks of segments and offload. Values are pseudo-random bytes from a seed, so content is checkable.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import crc32c

from storage import log_entry


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


def make_batch(
    base_offset: int,
    records: int,
    timestamps: list[int] | int,
    value_size: int = 100,
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    rng: random.Random | None = None,
) -> bytes:
    """A valid uncompressed v2 batch at ``base_offset`` holding ``records`` records of ``value_size`` bytes."""
    gen = rng or random.Random(base_offset)
    stamps = [timestamps + i for i in range(records)] if isinstance(timestamps, int) else list(timestamps)
    assert len(stamps) == records
    first_ts = stamps[0]
    body = bytearray()
    for i in range(records):
        value = gen.randbytes(value_size)
        rec = bytearray([0]) + _varint(stamps[i] - first_ts) + _varint(i) + _varint(-1)
        rec += _varint(len(value)) + value + _varint(0)
        body += _varint(len(rec)) + rec
    after_crc = struct.pack(
        ">hiqqqhii", 0, records - 1, first_ts, max(stamps), producer_id, producer_epoch, base_sequence, records
    ) + bytes(body)
    head = struct.pack(">qiibI", base_offset, 4 + 1 + 4 + len(after_crc), 0, 2, crc32c.crc32c(after_crc))
    return head + after_crc


@dataclass(frozen=True)
class Batch:
    data: bytes
    base_offset: int
    last_offset: int
    max_timestamp: int


def make_entry(batches: list[Batch]) -> bytes:
    """A partition-log ledger entry (storage/log_entry.py) holding ``batches``."""
    head = log_entry.EntryHeader(
        batches[0].base_offset, batches[-1].last_offset, max(b.max_timestamp for b in batches), -1, -1, -1, -1,
        len(batches),
    )  # fmt: skip
    return log_entry.encode(head, b"".join(b.data for b in batches))


def make_log(
    seed: int,
    entries: int,
    *,
    first_offset: int = 0,
    batches_per_entry: tuple[int, int] = (1, 3),
    records_per_batch: tuple[int, int] = (1, 20),
    value_size: tuple[int, int] = (10, 400),
    start_ts: int = 1_700_000_000_000,
    jitter_ms: int = 0,
) -> tuple[list[bytes], list[Batch]]:
    """Entries and their batches: contiguous offsets from ``first_offset``, timestamps rising by 1 ms per
    record (plus up to ``jitter_ms`` of random disorder)."""
    rng = random.Random(seed)
    offset, ts = first_offset, start_ts
    out_entries: list[bytes] = []
    out_batches: list[Batch] = []
    for _ in range(entries):
        group: list[Batch] = []
        for _ in range(rng.randint(*batches_per_entry)):
            n = rng.randint(*records_per_batch)
            stamps = [ts + i + (rng.randint(-jitter_ms, jitter_ms) if jitter_ms else 0) for i in range(n)]
            data = make_batch(offset, n, stamps, rng.randint(*value_size), rng=rng)
            group.append(Batch(data, offset, offset + n - 1, max(stamps)))
            offset += n
            ts += n
        out_entries.append(make_entry(group))
        out_batches.extend(group)
    return out_entries, out_batches
