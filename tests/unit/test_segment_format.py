"""The segment object format: writer, footer, index (offset and running-max timestamp), snapshot, checksums."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metadata.models import LedgerRef, OffloadIntent, PartitionState, ProducerSnapshotEntry, SegmentRecord
from storage import log_entry
from storage.segment.batches import iter_frames
from storage.segment.format import (
    FOOTER_SIZE,
    INDEX_ENTRY,
    CorruptSegment,
    SegmentFooter,
    SegmentIndex,
    SegmentWriter,
    object_key,
    parse_snapshot,
    parse_tail,
    partition_prefix,
    verify_object,
)
from tests.segment_data import Batch, make_batch, make_entry, make_log


def build(entries: list[bytes], base: int = 0, ledger: int = 7, **kw: object) -> bytearray:
    writer = SegmentWriter(base, ledger, **kw)  # type: ignore[arg-type]
    for e in entries:
        writer.append_entry(e)
    return writer.finish()


def tail_of(obj: bytes | bytearray, footer: SegmentFooter) -> tuple[SegmentFooter, SegmentIndex]:
    return parse_tail(bytes(obj[footer.data_length :]), len(obj), footer.data_length)


def first_batch_at_or_after(index: SegmentIndex, data: bytes, position: int, pred: object) -> int | None:
    for frame in iter_frames(data, position, index.data_length):
        if pred(frame):  # type: ignore[operator]
            return frame.position
    return None


def test_object_is_batches_then_index_snapshot_footer() -> None:
    entries, batches = make_log(1, 400, value_size=(200, 2000))
    obj = build(entries, ledger=42)
    footer = verify_object(obj)
    data = b"".join(b.data for b in batches)
    assert bytes(obj[: footer.data_length]) == data
    assert (footer.base_offset, footer.last_offset, footer.ledger_id) == (0, batches[-1].last_offset, 42)
    assert footer.max_timestamp == max(b.max_timestamp for b in batches)
    assert footer.batch_count == len(batches)
    assert footer.object_size == len(obj)
    assert footer.snapshot_position == footer.data_length + footer.index_count * INDEX_ENTRY.size
    assert bytes(obj[-FOOTER_SIZE : -FOOTER_SIZE + 8]) == b"TLSEGMT1"


def test_index_samples_batch_starts_about_every_64_kib() -> None:
    entries, batches = make_log(2, 600, value_size=(500, 3000))
    obj = build(entries)
    footer, index = tail_of(obj, SegmentFooter.parse(obj, len(obj)))
    starts = {}
    pos = 0
    for b in batches:
        starts[pos] = b
        pos += len(b.data)
    assert index.positions[0] == 0
    assert all(p in starts for p in index.positions)
    assert [starts[p].base_offset for p in index.positions] == list(index.base_offsets)
    largest = max(len(b.data) for b in batches)
    gaps = [b - a for a, b in itertools.pairwise(index.positions)]
    assert all(64 * 1024 <= g < 64 * 1024 + largest for g in gaps)
    assert len(index.positions) >= footer.data_length // (64 * 1024 + largest)


def test_every_offset_is_found_by_scanning_from_its_index_position() -> None:
    entries, batches = make_log(3, 300, value_size=(300, 1500))
    obj = build(entries)
    footer, index = tail_of(obj, SegmentFooter.parse(obj, len(obj)))
    data = bytes(obj[: footer.data_length])
    pos = 0
    for b in batches:
        for offset in (b.base_offset, b.last_offset):
            start = index.position_for_offset(offset)
            assert start <= pos
            found = first_batch_at_or_after(index, data, start, lambda f, o=offset: f.last_offset >= o)
            assert found == pos
        pos += len(b.data)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 400))
def test_timestamp_lookup_matches_brute_force(seed: int, jitter: int) -> None:
    entries, batches = make_log(seed, 120, value_size=(200, 2500), jitter_ms=jitter)
    obj = build(entries, index_interval=8 * 1024)
    footer, index = tail_of(obj, SegmentFooter.parse(obj, len(obj)))
    data = bytes(obj[: footer.data_length])
    positions = []
    pos = 0
    for b in batches:
        positions.append(pos)
        pos += len(b.data)
    rng = random.Random(seed)
    lo, hi = min(b.max_timestamp for b in batches) - 5, footer.max_timestamp + 5
    for ts in [lo, hi, *(rng.randint(lo, hi) for _ in range(40))]:
        expected = next((positions[i] for i, b in enumerate(batches) if b.max_timestamp >= ts), None)
        start = index.position_for_timestamp(ts)
        found = first_batch_at_or_after(index, data, start, lambda f, t=ts: f.max_timestamp >= t)
        assert found == expected


def test_producer_snapshot_keeps_last_five_batches_and_resets_on_new_epoch() -> None:
    offset = 0
    batches: list[Batch] = []
    # producer 9: eight batches of 3 records at epoch 0, then two at epoch 1; producer 5: one batch
    for i in range(8):
        batches.append(Batch(make_batch(offset, 3, 1000 + offset, producer_id=9, producer_epoch=0,
                                        base_sequence=i * 3), offset, offset + 2, 1000 + offset + 2))  # fmt: skip
        offset += 3
    batches.append(Batch(make_batch(offset, 2, 5000, producer_id=5, producer_epoch=3, base_sequence=0x7FFFFFFF),
                         offset, offset + 1, 5001))  # fmt: skip
    offset += 2
    for i in range(2):
        batches.append(Batch(make_batch(offset, 1, 6000, producer_id=9, producer_epoch=1, base_sequence=i),
                             offset, offset, 6000))  # fmt: skip
        offset += 1
    base = (ProducerSnapshotEntry(77, 2, ((0, 4, 100, 104),)),)
    obj = build([make_entry(batches[:5]), make_entry(batches[5:])], producers=base)
    footer = verify_object(obj)
    snap = {e.producer_id: e for e in parse_snapshot(bytes(obj[footer.data_length :]), footer)}
    assert snap[77] == base[0]
    assert snap[5] == ProducerSnapshotEntry(5, 3, ((0x7FFFFFFF, 0, 24, 25),))  # sequence wraps as Kafka's
    assert snap[9] == ProducerSnapshotEntry(9, 1, ((0, 0, 26, 26), (1, 1, 27, 27)))
    first_epoch = build([make_entry(batches[:8])])
    f2 = verify_object(first_epoch)
    snap2 = parse_snapshot(bytes(first_epoch[f2.data_length :]), f2)
    assert snap2 == (ProducerSnapshotEntry(9, 0, tuple((i * 3, i * 3 + 2, i * 3, i * 3 + 2) for i in range(3, 8))),)


def test_any_flipped_byte_is_detected() -> None:
    entries, _ = make_log(4, 60)
    obj = build(entries)
    footer = verify_object(obj)
    rng = random.Random(4)
    for position in [0, footer.data_length - 1, footer.data_length, len(obj) - 9, len(obj) - 1,
                     *(rng.randrange(len(obj)) for _ in range(30))]:  # fmt: skip
        damaged = bytearray(obj)
        damaged[position] ^= 0x40
        with pytest.raises(CorruptSegment):
            verify_object(damaged)
    # index and snapshot damage is caught from the tail alone (no data read)
    damaged = bytearray(obj)
    damaged[footer.data_length + 3] ^= 1
    with pytest.raises(CorruptSegment, match="checksum"):
        tail_of(damaged, footer)


@pytest.mark.parametrize("cut", [1, 8, FOOTER_SIZE, FOOTER_SIZE + 30, 1000])
def test_truncated_object_is_refused(cut: int) -> None:
    entries, _ = make_log(5, 40)
    obj = build(entries)
    with pytest.raises(CorruptSegment):
        verify_object(obj[:-cut])


def test_other_version_and_magic_are_refused() -> None:
    entries, _ = make_log(6, 10)
    obj = build(entries)
    at = len(obj) - FOOTER_SIZE
    other = bytearray(obj)
    struct.pack_into(">H", other, at + 8, 2)
    with pytest.raises(CorruptSegment, match="version"):
        SegmentFooter.parse(other, len(other))
    other = bytearray(obj)
    other[at : at + 8] = b"NOTASEGM"
    with pytest.raises(CorruptSegment, match="magic"):
        SegmentFooter.parse(other, len(other))
    with pytest.raises(CorruptSegment, match="describes"):
        SegmentFooter.parse(obj, len(obj) + 1)


def test_writer_refuses_bad_entries() -> None:
    entries, _ = make_log(7, 4, first_offset=100)
    damaged = bytearray(entries[1])
    damaged[-1] ^= 1
    writer = SegmentWriter(100, 1)
    writer.append_entry(entries[0])
    with pytest.raises(CorruptSegment, match="checksum"):
        writer.append_entry(bytes(damaged))
    with pytest.raises(CorruptSegment, match="do not follow"):
        writer.append_entry(entries[0])  # offsets going back
    # a header that disagrees with its batches
    batches = log_entry.batches_of(entries[2])
    head = log_entry.decode_header(entries[2])
    lying = log_entry.encode(log_entry.EntryHeader(head.first_offset, head.last_offset + 1, head.max_timestamp),
                             batches)  # fmt: skip
    with pytest.raises(CorruptSegment, match="disagree"):
        writer.append_entry(lying)
    # garbage inside the batches (a length running past the end)
    bad = bytearray(batches)
    struct.pack_into(">i", bad, 8, len(bad) * 2)
    with pytest.raises(CorruptSegment):
        writer.append_entry(log_entry.encode(head, bytes(bad)))
    # what went in before the failures is intact
    writer.append_entry(entries[1])
    obj = writer.finish()
    assert verify_object(obj).last_offset == log_entry.decode_header(entries[1]).last_offset


def test_size_hint_and_growth_give_the_same_object() -> None:
    entries, _ = make_log(8, 50)
    total = sum(len(e) for e in entries)
    assert build(entries, size_hint=total) == build(entries) == build(entries, size_hint=10)


def test_empty_segment_is_well_formed() -> None:
    obj = SegmentWriter(5, 3).finish()
    footer = verify_object(obj)
    assert (footer.data_length, footer.index_count, footer.last_offset, footer.batch_count) == (0, 0, 4, 0)


def test_object_keys() -> None:
    assert object_key("c1", "t-id", 3, 1234, 99) == "c1/topics/t-id/3/00000000000000001234-99.seg"
    assert object_key("c1", "t", 1, 0, 1).startswith(partition_prefix("c1", "t", 1))
    assert not object_key("c1", "t", 10, 0, 1).startswith(partition_prefix("c1", "t", 1))


def test_metadata_values_round_trip_and_old_ledger_refs_still_read() -> None:
    record = SegmentRecord(100, 199, 7, "c/topics/t/0/00000000000000000100-7.seg", 5000, 4000, 123, 2**64 - 1, 9)
    assert SegmentRecord.decode(record.encode()) == record
    intent = OffloadIntent(7, 100, record.object_key, 5)
    assert OffloadIntent.decode(intent.encode()) == intent
    ref = LedgerRef(7, 100, 199, 123, True, True)
    assert LedgerRef.from_list(ref.to_list()) == ref
    assert LedgerRef.from_list([7, 100, 199, 123, True]) == LedgerRef(7, 100, 199, 123, True, False)  # pre-offload
    state = PartitionState(3, 50, (ref, LedgerRef(8, 200)))
    assert PartitionState.decode(state.encode()) == state
