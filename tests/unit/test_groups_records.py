"""The __consumer_offsets formats (Kafka's key/value schemas), the internal batch builder, and group partitioning."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokers.codec import batch
from brokers.codec.builder import build_batch, build_batches, iter_records
from brokers.groups import records as rec


def _kafka_string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(s.encode())) + s.encode()


def test_offset_key_is_kafkas_layout() -> None:
    key = rec.encode_offset_key("grp", "orders", 7)
    # int16 version 1, group, topic, int32 partition — what Kafka's OffsetCommitKey writes
    assert key == struct.pack(">h", 1) + _kafka_string("grp") + _kafka_string("orders") + struct.pack(">i", 7)
    assert rec.decode_key(key) == rec.OffsetKey("grp", "orders", 7)
    v0 = struct.pack(">h", 0) + key[2:]
    assert rec.decode_key(v0) == rec.OffsetKey("grp", "orders", 7)


def test_group_key_and_unknown_key_versions() -> None:
    key = rec.encode_group_key("grp")
    assert key == struct.pack(">h", 2) + _kafka_string("grp")
    assert rec.decode_key(key) == rec.GroupKey("grp")
    other = struct.pack(">h", 3) + _kafka_string("grp")  # a KIP-848 record: left to its extension
    assert rec.decode_key(other) == rec.UnknownKey(3, other)


def test_offset_value_v3_bytes_and_every_readable_version() -> None:
    value = rec.OffsetValue(offset=42, leader_epoch=5, metadata="meta", commit_timestamp=1000)
    data = rec.encode_offset_value(value)
    assert data == struct.pack(">hqi", 3, 42, 5) + _kafka_string("meta") + struct.pack(">q", 1000)
    assert rec.decode_offset_value(data) == value
    # v1 carries an expire timestamp and is what we write when one is set
    expiring = rec.OffsetValue(42, -1, "", 1000, 5000)
    v1 = rec.encode_offset_value(expiring)
    assert v1[:2] == struct.pack(">h", 1)
    assert rec.decode_offset_value(v1) == expiring
    v0 = struct.pack(">hq", 0, 9) + _kafka_string("m") + struct.pack(">q", 77)
    assert rec.decode_offset_value(v0) == rec.OffsetValue(9, -1, "m", 77)
    # v4 is flexible: compact string (length + 1 as unsigned varint) and an empty tagged-field section
    v4 = struct.pack(">hqi", 4, 11, 2) + bytes([len("ab") + 1]) + b"ab" + struct.pack(">q", 5) + b"\x00"
    assert rec.decode_offset_value(v4) == rec.OffsetValue(11, 2, "ab", 5)


def _member(i: int, instance: str | None = None) -> rec.MemberMetadata:
    return rec.MemberMetadata(f"m{i}", instance, f"client{i}", f"/10.0.0.{i}", 30000, 10000, b"sub%d" % i, b"asg%d" % i)


def test_group_value_round_trip_and_v0_layout() -> None:
    value = rec.GroupValue("consumer", 7, "range", "m1", 123456, (_member(1, "static-1"), _member(2)))
    assert rec.decode_group_value(rec.encode_group_value(value)) == value
    empty = rec.GroupValue("consumer", 8, None, None, -1, ())
    assert rec.decode_group_value(rec.encode_group_value(empty)) == empty
    # v0: no rebalance timeout (reads as the session timeout), no state timestamp, no instance ids
    v0 = (
        struct.pack(">h", 0) + _kafka_string("consumer") + struct.pack(">i", 3) + _kafka_string("range")
        + _kafka_string("m1") + struct.pack(">i", 1) + _kafka_string("m1") + _kafka_string("c")
        + _kafka_string("/h") + struct.pack(">i", 6000) + struct.pack(">i", 2) + b"ab" + struct.pack(">i", 1) + b"x"
    )
    got = rec.decode_group_value(v0)
    member = rec.MemberMetadata("m1", None, "c", "/h", 6000, 6000, b"ab", b"x")
    assert got == rec.GroupValue("consumer", 3, "range", "m1", -1, (member,))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", struct.pack(">h", 9) + b"\x00" * 20, struct.pack(">hq", 3, 1) + b"\x00\x05ab"],
)
def test_malformed_values_raise_format_errors(data: bytes) -> None:
    with pytest.raises(rec.RecordFormatError):
        rec.decode_offset_value(data)
    with pytest.raises(rec.RecordFormatError):
        rec.decode_group_value(data)


def test_java_hash_and_kafka_partitioning() -> None:
    assert rec.java_string_hash("hello") == 99162322
    assert rec.java_string_hash("Aa") == rec.java_string_hash("BB") == 2112
    assert rec.java_string_hash("") == 0
    assert rec.java_string_hash("😀") == 1772899  # two UTF-16 code units (a surrogate pair)
    # Integer.MIN_VALUE: Kafka's Utils.abs maps it to 0 (Math.abs would stay negative)
    assert rec.java_string_hash("polygenelubricants") == -(2**31)
    assert rec.partition_for("polygenelubricants", 50) == 0
    assert rec.java_string_hash("my-group") == -1906497762
    assert rec.partition_for("my-group", 50) == 12  # abs(hash) % 50; (hash & 0x7fffffff) % 50 would be 36
    assert rec.partition_for("test-group", 50) == 12


@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.binary(max_size=300)), st.one_of(st.none(), st.binary(max_size=3000))),
        min_size=1,
        max_size=40,
    )
)
def test_built_batches_are_valid_kafka_batches_and_read_back(records: list[tuple[bytes | None, bytes | None]]) -> None:
    data = build_batch(records, 1_700_000_000_000)
    (head,) = batch.validate(data)  # framing, magic 2 and CRC-32C as any batch a client produces
    assert head.records_count == len(records) and head.record_span == len(records)
    assert head.producer_id == -1 and head.compression == 0
    got = list(iter_records(data, head))
    assert [(kv.key, kv.value) for kv in got] == records
    assert [kv.offset for kv in got] == list(range(len(records)))
    assert {kv.timestamp for kv in got} == {1_700_000_000_000}


def test_build_batches_splits_by_size_and_keeps_order() -> None:
    records = [(b"k%d" % i, b"v" * 100) for i in range(1000)]
    batches = build_batches(records, 5, max_bytes=10_000)
    assert len(batches) > 5
    back = []
    for data in batches:
        (head,) = batch.validate(data)
        assert head.size < 10_000 + 500
        back.extend((kv.key, kv.value) for kv in iter_records(data, head))
    assert back == records


def test_iter_records_rejects_truncated_records() -> None:
    data = bytearray(build_batch([(b"key", b"value")], 1))
    head = batch.validate(bytes(data))[0]
    body_len = len(data) - batch.HEADER_SIZE
    data[batch.HEADER_SIZE] = (body_len * 4) & 0x7F  # the record claims to run past the batch
    with pytest.raises(batch.CorruptBatch):
        list(iter_records(bytes(data), head))
