"""Transaction control batches (KIP-98): the COMMIT/ABORT markers a partition carries for a producer's transaction.

A control batch has the transactional (0x10) and control (0x20) attribute bits, the producer id and epoch of
the transaction, base sequence -1, and one record: key = int16 version (0) + int16 type (0 ABORT, 1 COMMIT),
value = int16 version (0) + int32 coordinator epoch. Sans-io (no asyncio): the partition log builds markers
with ``build_marker`` and recognises them with ``marker_type`` when it replays a ledger.
"""

from __future__ import annotations

import struct

from brokers.codec.batch import CONTROL_FLAG, TRANSACTIONAL_FLAG, BatchHeader, CorruptBatch
from brokers.codec.builder import build_batch, iter_records

ABORT = 0
COMMIT = 1
CONTROL_ATTRIBUTES = TRANSACTIONAL_FLAG | CONTROL_FLAG
_KEY = struct.Struct(">hh")  # version, type
_VALUE = struct.Struct(">hi")  # version, coordinator epoch


def build_marker(
    producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int, timestamp_ms: int
) -> bytes:
    """One control batch ending ``producer_id``'s transaction (offsets relative to 0; the log assigns them)."""
    key = _KEY.pack(0, COMMIT if commit else ABORT)
    value = _VALUE.pack(0, coordinator_epoch)
    return build_batch([(key, value)], timestamp_ms, producer_id, producer_epoch, CONTROL_ATTRIBUTES)


def marker_type(buf: bytes | bytearray | memoryview, head: BatchHeader) -> int | None:
    """ABORT or COMMIT for a control batch at ``head`` in ``buf``; None for any other batch or an unknown
    control type (Kafka skips those: only the two transaction markers change transaction state)."""
    if not head.is_control:
        return None
    for record in iter_records(memoryview(buf), head):
        if record.key is None or len(record.key) < _KEY.size:
            raise CorruptBatch("control record without a version and type key")
        _version, kind = _KEY.unpack_from(record.key)
        return kind if kind in (ABORT, COMMIT) else None
    return None


def marker_coordinator_epoch(buf: bytes | bytearray | memoryview, head: BatchHeader) -> int:
    """The coordinator epoch a transaction marker carries (-1 when it has none)."""
    for record in iter_records(memoryview(buf), head):
        if record.value is not None and len(record.value) >= _VALUE.size:
            return int(_VALUE.unpack_from(record.value)[1])
    return -1
