"""brokers/codec/stride_walk.py against the full record walk it shortcuts: the same answer on every batch it
takes, and never a batch the full walk refuses (random, equally long, mixed and corrupted records)."""

from __future__ import annotations

import random
import struct

import pytest

from brokers.codec import validate as validate_mod
from brokers.codec.batch import HEADER_SIZE, read_header
from brokers.codec.stride_walk import max_timestamp_delta
from brokers.codec.validate import BatchError, TopicRules, validate_batch
from tests.segment_data import make_batch

RULES = TopicRules()
NOW = 1_700_000_000_000


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _batch(rng: random.Random, count: int, sizes: list[int], deltas: list[int]) -> bytes:
    """A batch (header with a dummy CRC: the walk does not read it) of ``count`` records."""
    body = bytearray()
    for i in range(count):
        value = rng.randbytes(sizes[i])
        rec = b"\x00" + _varint(deltas[i]) + _varint(i) + _varint(-1) + _varint(len(value)) + value + _varint(0)
        body += _varint(len(rec)) + rec
    after = struct.pack(">hiqqqhii", 0, count - 1, NOW, NOW + max(deltas), -1, -1, -1, count) + bytes(body)
    return struct.pack(">qiibI", 0, 9 + len(after), 0, 2, 0) + after


def _full_walk(batch: bytes, monkeypatch: pytest.MonkeyPatch) -> int | str:
    with monkeypatch.context() as m:
        m.setattr(validate_mod, "max_timestamp_delta", lambda body, count: None)
        return _outcome(batch)


def _outcome(batch: bytes) -> int | str:
    try:
        return validate_batch(batch, read_header(batch, 0), RULES, NOW, 9).max_timestamp
    except BatchError as e:
        return f"{type(e).__name__}: {e}"


def _fast(batch: bytes) -> int | None:
    head = read_header(batch, 0)
    return max_timestamp_delta(memoryview(batch)[HEADER_SIZE : head.size], head.records_count)


def test_equal_records_take_the_short_way_with_the_full_walks_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1)
    for count, ts_step in ((1, 0), (3, 0), (64, 0), (65, 1), (320, 0), (1000, 1), (8192, 0)):
        deltas = [i * ts_step for i in range(count)]
        batch = _batch(rng, count, [1024] * count, deltas)
        fast = _fast(batch)
        assert fast is not None, count
        assert fast == max(deltas)
        assert _outcome(batch) == _full_walk(batch, monkeypatch) == NOW + max(deltas)


def test_past_8192_records_the_full_walk_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _batch(random.Random(6), 8200, [8] * 8200, [0] * 8200)  # three-byte offset deltas: not handled
    assert _fast(batch) is None
    assert _outcome(batch) == _full_walk(batch, monkeypatch) == NOW


def test_many_short_runs_give_up_early(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    sizes = [100 + (i // 5) % 2 for i in range(1000)]  # runs of five equal records
    batch = _batch(rng, 1000, sizes, [0] * 1000)
    assert _fast(batch) is None
    assert _outcome(batch) == _full_walk(batch, monkeypatch) == NOW


def test_librdkafka_sized_batches_match(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make_batch(0, 320, NOW, value_size=1024)  # timestamps one ms apart: two-byte deltas from record 64
    assert _fast(batch) == 319
    assert _outcome(batch) == _full_walk(batch, monkeypatch) == NOW + 319


def test_uneven_records_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(2)
    sizes = [rng.randrange(10, 3000) for _ in range(200)]
    batch = _batch(rng, 200, sizes, [0] * 200)
    assert _fast(batch) is None
    assert _outcome(batch) == _full_walk(batch, monkeypatch) == NOW


def test_negative_and_mixed_deltas_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    for _ in range(60):
        count = rng.choice([2, 10, 70, 200])
        deltas = [rng.choice([0, 5, -3, 63, 64, -65, 700, 9000, -9000]) for _ in range(count)]
        batch = _batch(rng, count, [rng.choice([100, 100, 101])] * count, deltas)
        fast = _fast(batch)
        assert fast is None or fast == max(deltas)
        assert _outcome(batch) == _full_walk(batch, monkeypatch)


def test_corrupted_batches_get_the_full_walks_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(4)
    base = _batch(rng, 150, [200] * 150, [i % 50 for i in range(150)])
    refused = 0
    for _ in range(400):
        buf = bytearray(base)
        for _ in range(rng.choice([1, 1, 2, 4])):
            stride = (len(base) - HEADER_SIZE) // 150  # equal records: hit the fields the walk reads
            at = rng.choice(
                [rng.randrange(HEADER_SIZE, len(buf)), HEADER_SIZE + rng.randrange(150) * stride + rng.randrange(7)]
            )
            buf[at] = rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF, buf[at] ^ 1, rng.randrange(256)])
        batch = bytes(buf)
        expected = _full_walk(batch, monkeypatch)
        assert _outcome(batch) == expected
        fast = _fast(batch)
        if isinstance(expected, str):
            refused += 1
            assert fast is None  # never accepts what the full walk refuses
    assert refused > 50  # the corruptions did hit the walked fields


def test_truncated_and_padded_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    base = _batch(rng, 100, [64] * 100, [0] * 100)
    head = read_header(base, 0)
    body = memoryview(base)[HEADER_SIZE:]
    assert max_timestamp_delta(body[:-1], head.records_count) is None
    assert max_timestamp_delta(memoryview(bytes(body) + b"\x00"), head.records_count) is None
    assert max_timestamp_delta(body, head.records_count + 1) is None
    assert max_timestamp_delta(body, head.records_count - 1) is None
    assert max_timestamp_delta(memoryview(b""), 0) is None
