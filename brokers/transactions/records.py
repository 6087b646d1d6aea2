"""The ``__transaction_state`` record formats: Kafka's own key and value schemas, so Kafka tooling can read them.

Key: TransactionLogKey v0 — int16 version (0), string transactional id. Value: TransactionLogValue v0 —
int16 version (0), int64 producer id, int16 producer epoch, int32 transaction timeout ms, int8 status,
nullable array of (string topic, array of int32 partitions), int64 last update ms, int64 start ms. Version 1
(Kafka 4's flexible form: compact strings and arrays, tagged fields for KIP-890's previous/next producer id)
is read too, its tagged fields skipped. A null value is a tombstone: the transactional id expired.
"""

from __future__ import annotations

from dataclasses import dataclass

from brokers.groups.records import RecordFormatError, _Reader, _Writer
from brokers.transactions.state import TxnMetadata, TxnState

KEY_VERSION = 0
VALUE_VERSION = 0

__all__ = ["RecordFormatError", "TxnValue", "decode_key", "decode_value", "encode_key", "encode_value"]


@dataclass(frozen=True, slots=True)
class TxnValue:
    """What one value record holds (the persisted part of a transactional id's metadata)."""

    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState
    partitions: frozenset[tuple[str, int]]
    update_ms: int
    start_ms: int

    @classmethod
    def of(cls, meta: TxnMetadata) -> TxnValue:
        return cls(meta.producer_id, meta.producer_epoch, meta.timeout_ms, meta.state, meta.partitions,
                   meta.update_ms, meta.start_ms)


def encode_key(transactional_id: str) -> bytes:
    w = _Writer()
    w.i16(KEY_VERSION)
    w.string(transactional_id)
    return bytes(w.buf)


def decode_key(data: bytes) -> str:
    r = _Reader(data)
    version = r.i16()
    if version != KEY_VERSION:
        raise RecordFormatError(f"unknown __transaction_state key version {version}")
    return r.required_string()


def encode_value(value: TxnValue) -> bytes:
    w = _Writer()
    w.i16(VALUE_VERSION)
    w.i64(value.producer_id)
    w.i16(value.producer_epoch)
    w.i32(value.timeout_ms)
    w.buf.append(int(value.state) & 0xFF)
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(value.partitions):
        by_topic.setdefault(topic, []).append(partition)
    w.i32(len(by_topic))
    for topic, partitions in by_topic.items():
        w.string(topic)
        w.i32(len(partitions))
        for p in partitions:
            w.i32(p)
    w.i64(value.update_ms)
    w.i64(value.start_ms)
    return bytes(w.buf)


def decode_value(data: bytes) -> TxnValue:
    r = _Reader(data)
    version = r.i16()
    if version not in (0, 1):
        raise RecordFormatError(f"unknown __transaction_state value version {version}")
    r.flexible = version >= 1
    producer_id = r.i64()
    producer_epoch = r.i16()
    timeout_ms = r.i32()
    raw_state = r.data[r._take(1)]
    try:
        state = TxnState(raw_state)
    except ValueError:
        raise RecordFormatError(f"unknown transaction status {raw_state}") from None
    partitions: set[tuple[str, int]] = set()
    for _ in range(r.array_length()):
        topic = r.required_string()
        for _ in range(r.array_length()):
            partitions.add((topic, r.i32()))
        r.tagged_fields()
    update_ms = r.i64()
    start_ms = r.i64()
    r.tagged_fields()
    return TxnValue(producer_id, producer_epoch, timeout_ms, state, frozenset(partitions), update_ms, start_ms)
