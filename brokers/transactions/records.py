"""The ``__transaction_state`` record formats: Kafka's own key and value schemas, so Kafka tooling can read them.

Key: TransactionLogKey v0 — int16 version (0), string transactional id. Value: TransactionLogValue v0 —
int16 version (0), int64 producer id, int16 producer epoch, int32 transaction timeout ms, int8 status,
nullable array of (string topic, array of int32 partitions), int64 last update ms, int64 start ms. Written as
version 1 (Kafka 4's flexible form: compact strings and arrays, then tagged fields): tag 0 PreviousProducerId,
tag 1 NextProducerId, tag 2 ClientTransactionVersion, as Kafka's TransactionLogValue.json defines them, and
Tidelog's own tag 100, the previous producer epoch (Kafka keeps that one in memory only; persisting it lets a
KIP-360 retry or a retried TV2 EndTxn be recognised by the next coordinator after a move). Readers skip tags
they do not know (Kafka's, and Tidelog's before this version), and version 0 records are still read (their
previous producer id/epoch then come from memory). A null value is a tombstone: the transactional id expired.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brokers.groups.records import RecordFormatError, _Reader, _Writer
from brokers.transactions.state import TxnMetadata, TxnState

KEY_VERSION = 0
VALUE_VERSION = 1
TAG_PREVIOUS_PRODUCER_ID = 0
TAG_NEXT_PRODUCER_ID = 1
TAG_CLIENT_TRANSACTION_VERSION = 2
TAG_PREVIOUS_PRODUCER_EPOCH = 100
"""Tidelog's own tag, far above Kafka's so a later Kafka field cannot collide with it."""

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
    previous_producer_id: int = -1
    previous_producer_epoch: int = -1
    next_producer_id: int = -1
    client_version: int = 0
    tagged: bool = field(default=False, compare=False)
    """Whether the record was a version 1 one (its previous producer id/epoch are then authoritative)."""

    @classmethod
    def of(cls, meta: TxnMetadata) -> TxnValue:
        return cls(meta.producer_id, meta.producer_epoch, meta.timeout_ms, meta.state, meta.partitions,
                   meta.update_ms, meta.start_ms, meta.last_producer_id, meta.last_producer_epoch,
                   meta.next_producer_id, meta.client_version, True)


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


def _uvarint(buf: bytearray, n: int) -> None:
    while n >= 0x80:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def _compact_string(buf: bytearray, s: str) -> None:
    data = s.encode()
    if len(data) > 0x7FFF:
        raise RecordFormatError(f"string of {len(data)} bytes is longer than 32767")
    _uvarint(buf, len(data) + 1)
    buf += data


def encode_value(value: TxnValue) -> bytes:
    """TransactionLogValue v1 (flexible), tagged fields only where they differ from Kafka's defaults."""
    w = _Writer()
    w.i16(VALUE_VERSION)
    w.i64(value.producer_id)
    w.i16(value.producer_epoch)
    w.i32(value.timeout_ms)
    w.buf.append(int(value.state) & 0xFF)
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(value.partitions):
        by_topic.setdefault(topic, []).append(partition)
    _uvarint(w.buf, len(by_topic) + 1)
    for topic, partitions in by_topic.items():
        _compact_string(w.buf, topic)
        _uvarint(w.buf, len(partitions) + 1)
        for p in partitions:
            w.i32(p)
        _uvarint(w.buf, 0)  # the PartitionsSchema entry's tagged fields
    w.i64(value.update_ms)
    w.i64(value.start_ms)
    tags: list[tuple[int, bytes]] = []
    if value.previous_producer_id != -1:
        tags.append((TAG_PREVIOUS_PRODUCER_ID, value.previous_producer_id.to_bytes(8, "big", signed=True)))
    if value.next_producer_id != -1:
        tags.append((TAG_NEXT_PRODUCER_ID, value.next_producer_id.to_bytes(8, "big", signed=True)))
    if value.client_version != 0:
        tags.append((TAG_CLIENT_TRANSACTION_VERSION, value.client_version.to_bytes(2, "big", signed=True)))
    if value.previous_producer_epoch != -1:
        tags.append((TAG_PREVIOUS_PRODUCER_EPOCH, value.previous_producer_epoch.to_bytes(2, "big", signed=True)))
    _uvarint(w.buf, len(tags))
    for tag, data in tags:
        _uvarint(w.buf, tag)
        _uvarint(w.buf, len(data))
        w.buf += data
    return bytes(w.buf)


def _tagged(r: _Reader) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for _ in range(r.uvarint()):
        tag = r.uvarint()
        size = r.uvarint()
        start = r._take(size)
        out[tag] = bytes(r.data[start : start + size])
    return out


def _int(tags: dict[int, bytes], tag: int, size: int, default: int) -> int:
    data = tags.get(tag)
    if data is None:
        return default
    if len(data) != size:
        raise RecordFormatError(f"tagged field {tag} has {len(data)} bytes, expected {size}")
    return int.from_bytes(data, "big", signed=True)


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
    if version == 0:
        return TxnValue(producer_id, producer_epoch, timeout_ms, state, frozenset(partitions), update_ms, start_ms)
    tags = _tagged(r)
    return TxnValue(
        producer_id, producer_epoch, timeout_ms, state, frozenset(partitions), update_ms, start_ms,
        _int(tags, TAG_PREVIOUS_PRODUCER_ID, 8, -1), _int(tags, TAG_PREVIOUS_PRODUCER_EPOCH, 2, -1),
        _int(tags, TAG_NEXT_PRODUCER_ID, 8, -1), _int(tags, TAG_CLIENT_TRANSACTION_VERSION, 2, 0), True,
    )
