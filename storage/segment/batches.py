"""Kafka v2 record-batch headers as storage needs them: framing, offsets, max timestamp, producer fields.

Storage never decodes records and never imports the broker's codec: it reads the 61-byte batch header with
``struct`` and treats the rest of each batch as opaque bytes. Header layout (big-endian)::

    0 base_offset i64 | 8 batch_length i32 | 12 leader_epoch i32 | 16 magic i8 | 17 crc u32 | 21 attributes i16
    23 last_offset_delta i32 | 27 base_timestamp i64 | 35 max_timestamp i64 | 43 producer_id i64
    51 producer_epoch i16 | 53 base_sequence i32 | 57 records_count i32

A batch occupies ``12 + batch_length`` bytes.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from metadata.models import ProducerSnapshotEntry

HEADER_SIZE = 61
LOG_OVERHEAD = 12
MAGIC_V2 = 2
_FRAME = struct.Struct(">qi")  # base offset, batch length
_MAGIC_AT = 16
_DELTA = struct.Struct(">i")  # last offset delta at 23
_MAX_TS = struct.Struct(">q")  # max timestamp at 35
_PRODUCER = struct.Struct(">qhi")  # producer id, epoch, base sequence at 43
_SEQ_MOD = 0x80000000
MAX_CACHED_BATCHES = 5
MAX_PRODUCERS = 10_000


class BadBatch(ValueError):
    """Bytes that are not a well-framed v2 record batch."""


class BatchFrame(NamedTuple):
    """Where one batch sits in its buffer and the offsets and timestamp it covers."""

    position: int
    size: int
    base_offset: int
    last_offset: int
    max_timestamp: int


def frame_at(buf: bytes | bytearray | memoryview, position: int, end: int) -> BatchFrame:
    """The batch starting at ``position``; it must end at or before ``end``. Raises BadBatch."""
    if position + HEADER_SIZE > end:
        raise BadBatch(f"batch header at {position} runs past {end}")
    base, length = _FRAME.unpack_from(buf, position)
    size = LOG_OVERHEAD + length
    if length < HEADER_SIZE - LOG_OVERHEAD or position + size > end:
        raise BadBatch(f"batch at {position} has length {length}, past {end}")
    if buf[position + _MAGIC_AT] != MAGIC_V2:
        raise BadBatch(f"batch at {position} has magic {buf[position + _MAGIC_AT]}, not 2")
    (delta,) = _DELTA.unpack_from(buf, position + 23)
    (max_ts,) = _MAX_TS.unpack_from(buf, position + 35)
    return BatchFrame(position, size, base, base + delta, max_ts)


def iter_frames(buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None) -> Iterator[BatchFrame]:
    """Every batch in ``buf[start:end]``, which must hold whole batches only. Raises BadBatch."""
    stop = len(buf) if end is None else end
    pos = start
    while pos < stop:
        frame = frame_at(buf, pos, stop)
        yield frame
        pos += frame.size


class ProducerFields(NamedTuple):
    producer_id: int
    producer_epoch: int
    base_sequence: int
    last_sequence: int


def producer_fields(buf: bytes | bytearray | memoryview, frame: BatchFrame) -> ProducerFields:
    """The idempotent-producer fields of a batch (``last_sequence`` -1 when it carries no sequence)."""
    pid, epoch, base_seq = _PRODUCER.unpack_from(buf, frame.position + 43)
    last_seq = -1 if base_seq < 0 else (base_seq + frame.last_offset - frame.base_offset) % _SEQ_MOD
    return ProducerFields(pid, epoch, base_seq, last_seq)


class ProducerStateBuilder:
    """Idempotent-producer state as the broker keeps it: per producer its epoch and last five batches.

    Seeded with a snapshot, fed batches in offset order; ``snapshot()`` is the state after them, in the
    shape of ``metadata.models.ProducerSnapshotEntry``.
    """

    def __init__(self, base: Iterable[ProducerSnapshotEntry] = ()) -> None:
        self._producers: dict[int, tuple[int, deque[tuple[int, int, int, int]]]] = {}
        for entry in base:
            self._producers[entry.producer_id] = (entry.epoch, deque(entry.batches, maxlen=MAX_CACHED_BATCHES))

    def record(self, buf: bytes | bytearray | memoryview, frame: BatchFrame) -> None:
        """Account for one batch (batches without a producer id are ignored)."""
        fields = producer_fields(buf, frame)
        if fields.producer_id < 0:
            return
        state = self._producers.get(fields.producer_id)
        if state is None or fields.producer_epoch > state[0]:
            if state is None and len(self._producers) >= MAX_PRODUCERS:
                self._producers.pop(next(iter(self._producers)))
            state = (fields.producer_epoch, deque(maxlen=MAX_CACHED_BATCHES))
            self._producers[fields.producer_id] = state
        if fields.base_sequence >= 0:
            state[1].append((fields.base_sequence, fields.last_sequence, frame.base_offset, frame.last_offset))

    def snapshot(self) -> tuple[ProducerSnapshotEntry, ...]:
        return tuple(ProducerSnapshotEntry(pid, epoch, tuple(b)) for pid, (epoch, b) in self._producers.items())
