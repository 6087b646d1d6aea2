"""Producer batch validation (brokers/codec/validate.py): each rule on hand-built batches whose CRC is valid,
so only the lie in the header or the records can refuse them."""

from __future__ import annotations

import struct

import cramjam
import crc32c
import pytest

from brokers.codec.batch import TIMESTAMP_TYPE_FLAG, CorruptBatch, read_header, restamp, validate
from brokers.codec.validate import (
    MAX_DECOMPRESSED_BYTES,
    InvalidRecord,
    InvalidTimestamp,
    TopicRules,
    UnsupportedCompression,
    check_request_batches,
    validate_batch,
)
from tests.batches import make_batch
from tests.e2e.kafka_wire import Record, encode_record, record_batch, varint

NOW = 1_700_000_000_000
PLAIN = TopicRules()


def raw_batch(
    body: bytes,
    *,
    count: int,
    last_delta: int | None = None,
    attributes: int = 0,
    base_ts: int = NOW,
    max_ts: int | None = None,
    producer_id: int = -1,
    base_sequence: int = -1,
    base_offset: int = 0,
) -> bytes:
    """A v2 batch around ``body`` (the records section as sent) with whatever header fields the test wants
    and a correct CRC-32C."""
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            count - 1 if last_delta is None else last_delta,
            base_ts,
            base_ts if max_ts is None else max_ts,
            producer_id,
            0 if producer_id >= 0 else -1,
            base_sequence,
            count,
        )
        + body
    )
    head = struct.pack(">qiibI", base_offset, 9 + len(after_crc), -1, 2, crc32c.crc32c(after_crc))
    return head + after_crc


def records(n: int, start_delta: int = 0, ts_deltas: list[int] | None = None) -> bytes:
    return b"".join(
        encode_record(start_delta + i, Record(b"k%d" % i, b"v" * 20, timestamp_delta=(ts_deltas or [0] * n)[i]))
        for i in range(n)
    )


def check(batch: bytes, rules: TopicRules = PLAIN, version: int = 9, now: int = NOW) -> int:
    head = check_request_batches(validate(batch))
    return validate_batch(batch, head, rules, now, version).max_timestamp


def test_well_formed_batches_pass_and_report_their_max_timestamp() -> None:
    assert check(make_batch(5, base_ts=NOW)) == NOW + 4
    assert check(raw_batch(records(3, ts_deltas=[5, 9, 2]), count=3)) == NOW + 9
    assert check(raw_batch(records(1), count=1, base_ts=-1)) == -1  # no timestamp at all
    many = raw_batch(records(300, ts_deltas=list(range(0, 3000, 10))), count=300)  # multi-byte varints
    assert check(many) == NOW + 2990


def test_exactly_one_batch_per_partition() -> None:
    two = make_batch(2) + make_batch(2)
    with pytest.raises(InvalidRecord, match="exactly one"):
        check(two)


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_unknown_codec_is_unsupported_compression(codec: int) -> None:
    with pytest.raises(UnsupportedCompression, match=f"codec {codec}"):
        check(raw_batch(records(1), count=1, attributes=codec))


def test_zstd_needs_produce_v7() -> None:
    body = bytes(cramjam.zstd.compress(records(2)))
    batch = raw_batch(body, count=2, attributes=4)
    with pytest.raises(UnsupportedCompression, match="zstd"):
        check(batch, version=6)
    assert check(batch, version=7) == NOW


def test_last_offset_delta_must_match_the_count() -> None:
    with pytest.raises(InvalidRecord, match="inconsistent"):
        check(raw_batch(records(1), count=1, last_delta=1_000_000))
    with pytest.raises(InvalidRecord, match="inconsistent"):
        check(raw_batch(records(3), count=3, last_delta=1))


def test_record_count_must_be_positive() -> None:
    with pytest.raises((InvalidRecord, CorruptBatch)):
        check(raw_batch(b"", count=0, last_delta=-1))


@pytest.mark.parametrize(("declared", "present"), [(3, 2), (2, 3), (1, 5)])
def test_declared_count_must_match_the_records_present(declared: int, present: int) -> None:
    batch = raw_batch(records(present), count=declared)
    with pytest.raises(InvalidRecord, match=r"claims|remain"):
        check(batch)


def test_record_length_past_the_batch_end() -> None:
    body = records(2)
    claims_more = varint(1000) + body[1:]  # the first record's length prefix says 1000 bytes
    with pytest.raises(InvalidRecord, match="does not fit"):
        check(raw_batch(claims_more, count=2))
    negative = varint(-5) + body[1:]
    with pytest.raises(InvalidRecord, match="does not fit"):
        check(raw_batch(negative, count=2))


def test_truncated_records_inside_a_valid_crc() -> None:
    body = records(3)
    with pytest.raises(InvalidRecord):
        check(raw_batch(body[:-4], count=3))


def test_extra_bytes_after_the_records() -> None:
    with pytest.raises(InvalidRecord, match="remain"):
        check(raw_batch(records(2) + b"\x00\x00\x00", count=2))


def test_record_shorter_than_its_fields() -> None:
    # a record claiming 2 bytes cannot hold attributes, two deltas, key, value and header count
    body = b"\x04\x00\x00" + records(1, start_delta=1)
    with pytest.raises(InvalidRecord, match="length"):
        check(raw_batch(body, count=2))


@pytest.mark.parametrize("deltas", [[1, 0], [0, 0], [0, 2], [5, 6]])
def test_offset_deltas_must_run_from_zero(deltas: list[int]) -> None:
    body = b"".join(encode_record(d, Record(b"k", b"v")) for d in deltas)
    with pytest.raises(InvalidRecord, match="offset delta"):
        check(raw_batch(body, count=2))


def test_base_offset_must_be_zero() -> None:
    with pytest.raises(InvalidRecord, match="base offset"):
        check(raw_batch(records(1), count=1, base_offset=42))


def test_control_batches_from_clients_are_refused() -> None:
    with pytest.raises(InvalidRecord, match="control"):
        check(raw_batch(records(1), count=1, attributes=0x20, producer_id=7, base_sequence=0))


def test_producer_id_needs_a_sequence_and_transactions_a_producer_id() -> None:
    with pytest.raises(InvalidRecord, match="sequence"):
        check(raw_batch(records(1), count=1, producer_id=7, base_sequence=-1))
    with pytest.raises(InvalidRecord, match="transactional"):
        check(raw_batch(records(1), count=1, attributes=0x10))
    head = read_header(raw_batch(records(1), count=1, attributes=0x10, producer_id=7, base_sequence=0), 0)
    assert head.is_transactional  # passes here; the produce handler refuses it (no transactions)


def test_producer_may_not_claim_log_append_time() -> None:
    with pytest.raises(InvalidTimestamp) as e:
        check(raw_batch(records(1), count=1, attributes=TIMESTAMP_TYPE_FLAG))
    assert e.value.record_errors and e.value.record_errors[0][0] == 0


def test_log_append_time_batch_with_a_huge_span_is_refused_before_anything_is_read() -> None:
    batch = raw_batch(records(1), count=1, last_delta=20_000_000, attributes=TIMESTAMP_TYPE_FLAG)
    with pytest.raises(InvalidRecord):
        check(batch)


def test_timestamps_within_the_topic_bounds() -> None:
    rules = TopicRules(before_max_ms=60_000, after_max_ms=1_000)
    assert check(raw_batch(records(2, ts_deltas=[0, 500]), count=2, base_ts=NOW - 59_000), rules) == NOW - 58_500
    with pytest.raises(InvalidTimestamp) as old:
        check(raw_batch(records(3), count=3, base_ts=NOW - 61_000), rules)
    assert [i for i, _ in old.value.record_errors] == [0, 1, 2]
    with pytest.raises(InvalidTimestamp) as future:
        check(raw_batch(records(2, ts_deltas=[0, 2_000]), count=2, base_ts=NOW), rules)
    assert [i for i, _ in future.value.record_errors] == [1]
    # records without a timestamp (-1) are not checked, as in Kafka
    assert check(raw_batch(records(1), count=1, base_ts=-1), rules) == -1


def test_log_append_time_topic_skips_timestamp_bounds() -> None:
    rules = TopicRules(log_append_time=True, before_max_ms=1, after_max_ms=1)
    assert check(raw_batch(records(1), count=1, base_ts=5), rules) == 5


def test_compacted_topic_needs_keys() -> None:
    rules = TopicRules(compacted=True)
    keyed = b"".join(encode_record(i, Record(b"k", b"v")) for i in range(2))
    assert check(raw_batch(keyed, count=2), rules) == NOW
    keyless = encode_record(0, Record(b"k", b"v")) + encode_record(1, Record(None, b"v"))
    with pytest.raises(InvalidRecord) as e:
        check(raw_batch(keyless, count=2), rules)
    assert [i for i, _ in e.value.record_errors] == [1]


COMPRESSORS = {
    1: lambda b: bytes(cramjam.gzip.compress(b)),
    2: lambda b: bytes(cramjam.snappy.compress_raw(b)),
    3: lambda b: bytes(cramjam.lz4.compress(b)),
    4: lambda b: bytes(cramjam.zstd.compress(b)),
}


def xerial(b: bytes) -> bytes:
    chunk = bytes(cramjam.snappy.compress_raw(b))
    return b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + struct.pack(">i", len(chunk)) + chunk


@pytest.mark.parametrize("codec", [1, 2, 3, 4])
def test_compressed_batches_are_walked_too(codec: int) -> None:
    good = raw_batch(COMPRESSORS[codec](records(4, ts_deltas=[0, 3, 1, 2])), count=4, attributes=codec)
    assert check(good) == NOW + 3
    lying = raw_batch(COMPRESSORS[codec](records(1)), count=1_000_001, attributes=codec, last_delta=1_000_000)
    with pytest.raises(InvalidRecord):
        check(lying)
    short = raw_batch(COMPRESSORS[codec](records(2)), count=3, attributes=codec)
    with pytest.raises(InvalidRecord, match="claims"):
        check(short)
    bad_deltas = b"".join(encode_record(d, Record(b"k", b"v")) for d in (0, 2))
    with pytest.raises(InvalidRecord, match="offset delta"):
        check(raw_batch(COMPRESSORS[codec](bad_deltas), count=2, attributes=codec))


def test_xerial_snappy_is_walked() -> None:
    assert check(raw_batch(xerial(records(3)), count=3, attributes=2)) == NOW


def test_garbage_compressed_payload_is_invalid_record() -> None:
    with pytest.raises(InvalidRecord, match="decompress"):
        check(raw_batch(b"\x00not zstd at all" * 4, count=1, attributes=4))


def test_decompression_bomb_is_bounded() -> None:
    bomb = bytes(cramjam.zstd.compress(b"\x00" * (MAX_DECOMPRESSED_BYTES + 1024)))
    assert len(bomb) < 10_000
    with pytest.raises(InvalidRecord, match="decompress"):
        check(raw_batch(bomb, count=1, attributes=4))


def test_restamp_rewrites_max_timestamp_and_crc() -> None:
    buf = bytearray(raw_batch(records(2, ts_deltas=[0, 7]), count=2, max_ts=NOW + 10**9))
    head = read_header(buf, 0)
    new = restamp(buf, head, head.attributes | TIMESTAMP_TYPE_FLAG, NOW + 7)
    again = validate(bytes(buf))[0]  # the CRC is valid again
    assert again == new
    assert (again.max_timestamp, again.attributes & TIMESTAMP_TYPE_FLAG) == (NOW + 7, TIMESTAMP_TYPE_FLAG)


def test_kafka_wire_builder_batches_pass() -> None:
    batch = record_batch([Record(b"a", b"1", [("h", b"x")]), Record(None, b"2", [], 3)], NOW)
    assert check(batch) == NOW + 3


# --- ListOffsets by timestamp over batches stored before validation existed ------------------------------


class _StoredLog:
    """The two lookups ListOffsets makes of a partition log, answering with fixed batches."""

    def __init__(self, batches: bytes, log_start_offset: int = 0) -> None:
        self.batches = memoryview(batches)
        self.log_start_offset = log_start_offset

    async def find_by_timestamp(self, timestamp: int) -> memoryview:
        return self.batches

    async def max_timestamp_entry(self) -> memoryview:
        return self.batches


def _lookup_peak(batches: bytes, timestamp: int, start: int = 0) -> tuple[tuple[int, int], int]:
    import asyncio
    import tracemalloc

    from brokers.handlers import list_offsets

    tracemalloc.start()
    try:
        found = asyncio.run(list_offsets.lookup(_StoredLog(batches, start), timestamp))  # type: ignore[arg-type]
        return found, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("query", [NOW, -3])  # a timestamp, and MAX_TIMESTAMP
def test_list_offsets_over_a_huge_log_append_time_span_allocates_per_batch(query: int) -> None:
    """A LogAppendTime batch claiming 20 M offsets (appended before producer batches were validated) once made
    ListOffsets build one tuple per offset: 2 GB and 3 s. Now its header answers."""
    huge = raw_batch(records(1), count=1, last_delta=20_000_000, attributes=TIMESTAMP_TYPE_FLAG, max_ts=NOW)
    found, peak = _lookup_peak(huge, query)
    assert found == (NOW, 0)
    assert peak < 1_000_000, f"ListOffsets allocated {peak} bytes for one batch"
    found, _ = _lookup_peak(huge, query, start=12_345_678)  # DeleteRecords moved the start into the batch
    assert found == (NOW, 12_345_678)


def test_list_offsets_over_unreadable_stored_records_answers_from_the_header() -> None:
    lying = raw_batch(records(1), count=2_000_000, last_delta=1_999_999, max_ts=NOW + 5)
    codec7 = raw_batch(records(1), count=1, attributes=7, max_ts=NOW + 5)
    for stored in (lying, codec7):
        found, peak = _lookup_peak(stored, NOW + 1)
        assert found == (NOW + 5, 0)
        assert peak < 1_000_000


def test_list_offsets_reads_records_of_a_sound_batch() -> None:
    stored = raw_batch(records(3, ts_deltas=[0, 9, 4]), count=3, max_ts=NOW + 9)
    assert _lookup_peak(stored, NOW + 3)[0] == (NOW + 9, 1)
    assert _lookup_peak(stored, -3)[0] == (NOW + 9, 1)
    assert _lookup_peak(stored, NOW + 10)[0] == (-1, -1)


def test_varints_of_every_width() -> None:
    """Record lengths, timestamp and offset deltas of one, two and three bytes (and more) walk alike."""
    n = 9_000  # offset deltas past 8191 take three bytes
    body = b"".join(encode_record(i, Record(None, b"", timestamp_delta=i * 1_000)) for i in range(n))
    assert check(raw_batch(body, count=n)) == NOW + (n - 1) * 1_000
    big = b"".join(encode_record(i, Record(b"k", b"x" * size)) for i, size in enumerate((10, 100, 10_000, 70_000)))
    assert check(raw_batch(big, count=4)) == NOW
    huge_ts = encode_record(0, Record(b"k", b"v", timestamp_delta=-(2**40))) + encode_record(1, Record(b"k", b"v"))
    assert check(raw_batch(huge_ts, count=2, base_ts=2**41)) == 2**41


def test_mutated_batches_raise_only_batch_errors() -> None:
    """A seeded mutation run over valid batches, CRC fixed after each change: every outcome is a pass or a
    BatchError (never IndexError or another exception, which the produce handler would turn into an internal
    error)."""
    import random

    from brokers.codec.batch import BatchError

    rng = random.Random(9)
    seeds = [
        raw_batch(records(5, ts_deltas=[0, 1, 300, 2, 70_000]), count=5),
        raw_batch(COMPRESSORS[4](records(3)), count=3, attributes=4),
        raw_batch(COMPRESSORS[3](records(3)), count=3, attributes=3),
        make_batch(40, base_ts=NOW),
    ]
    outcomes = {"pass": 0, "refused": 0}
    rules = TopicRules(before_max_ms=10**9, after_max_ms=10**9, compacted=True)
    for n in range(3_000):
        buf = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(21, len(buf))
            if rng.random() < 0.8:
                buf[at] = rng.randrange(256)
            elif rng.random() < 0.5:
                del buf[at : at + rng.randint(1, 8)]
            else:
                buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        struct.pack_into(">i", buf, 8, len(buf) - 12)
        struct.pack_into(">I", buf, 17, crc32c.crc32c(bytes(buf[21:])))
        try:
            check(bytes(buf), rules)
            outcomes["pass"] += 1
        except BatchError:
            outcomes["refused"] += 1
        except Exception as e:  # pragma: no cover - the failure being tested for
            raise AssertionError(f"mutation {n}: {type(e).__name__}: {e} on {bytes(buf).hex()}") from e
    assert outcomes["refused"] > 1_000, outcomes
