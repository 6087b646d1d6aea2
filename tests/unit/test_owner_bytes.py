"""The owner's bytes (storage/offload/owner_bytes.py) and the streamed segment writer: budget, holes, cut at
the last entry id, and a streamed segment byte-for-byte equal to the one built in one buffer."""

from __future__ import annotations

import asyncio

import pytest

from metadata.models import LedgerRef, ProducerSnapshotEntry
from storage.offload.build import BuildError, BuildSpec, SegmentStream, owner_entries
from storage.offload.owner_bytes import OwnerBytes
from storage.segment.format import SegmentWriter, StreamingSegmentWriter, verify_object
from tests.segment_data import make_log


def test_entries_are_kept_in_order_and_cut_at_the_last_entry_id() -> None:
    owner = OwnerBytes(1000)
    for i in range(4):
        assert owner.add("t", 0, 7, i, bytes([i]) * 10)
    assert owner.held == 40 and owner.bytes_of("t", 0) == 40 and owner.bytes_of("t", 1) == 0
    assert owner.entries(7, 1) == [b"\x00" * 10, b"\x01" * 10]  # recovery closed it at entry 1
    assert owner.entries(7, 3) is not None and len(owner.entries(7, 3) or ()) == 4
    assert owner.entries(7, 4) is None  # the ledger holds more than we kept: read the bookies
    assert owner.entries(7, -1) is None and owner.entries(8, 0) is None
    owner.drop(7)
    assert owner.held == 0 and owner.entries(7, 0) is None


def test_a_hole_spills_the_ledger_and_frees_its_bytes() -> None:
    owner = OwnerBytes(1000)
    assert not owner.add("t", 0, 1, 1, b"x" * 10)  # entry 0 never seen (a load after a restart)
    assert owner.add("t", 0, 2, 0, b"y" * 10)
    assert not owner.add("t", 0, 2, 2, b"y" * 10)  # entry 1 skipped
    assert not owner.add("t", 0, 2, 3, b"y" * 10)  # spilled ledgers take nothing more
    assert owner.held == 0 and owner.entries(2, 0) is None
    assert owner.stats().spilled == 2


def test_the_budget_is_broker_wide_and_spills_the_ledger_that_overflows() -> None:
    owner = OwnerBytes(100)
    assert owner.add("a", 0, 1, 0, b"a" * 60)
    assert owner.add("b", 3, 2, 0, b"b" * 30)
    assert not owner.add("b", 3, 2, 1, b"b" * 30)  # 120 > 100: ledger 2 goes to the bookies
    assert owner.held == 60 and owner.entries(2, 0) is None and owner.entries(1, 0) == [b"a" * 60]
    assert owner.add("b", 3, 5, 0, b"c" * 40)  # the partition's next ledger starts afresh
    owner.drop_partition("a", 0)
    assert owner.held == 40 and owner.bytes_of("b", 3) == 40
    assert OwnerBytes(0).add("t", 0, 1, 0, b"x") is False  # budget 0: never kept
    owner.add("b", 3, 6, 0, b"d" * 10)
    owner.add("c", 0, 7, 0, b"e" * 10)
    owner.retain("b", 3, {6})  # ledger 5 left the log (DeleteRecords) before its offload
    assert owner.entries(5, 0) is None and owner.entries(6, 0) is not None and owner.entries(7, 0) is not None
    assert owner.held == 20
    with pytest.raises(ValueError, match="budget"):
        OwnerBytes(-1)


def test_streamed_segment_is_byte_identical_to_the_one_buffer_segment() -> None:
    entries, _batches = make_log(5, 300, value_size=(100, 3000))
    producers = (ProducerSnapshotEntry(9, 1, ((0, 4, 0, 4),)),)
    aborted = ((9, 3, 10),)
    whole = SegmentWriter(0, 42, producers=producers, aborted=aborted, index_interval=4096)
    streamed = StreamingSegmentWriter(0, 42, producers=producers, aborted=aborted, index_interval=4096)
    pieces: list[bytes] = []
    for entry in entries:
        whole.append_entry(entry)
        streamed.append_entry(entry)
        pieces += [bytes(c) for c in streamed.take_chunks()]
    pieces.append(streamed.finish_tail())
    built = bytes(whole.finish())
    assert b"".join(pieces) == built
    footer = verify_object(built)
    assert footer.index_count > 10 and footer.ledger_id == 42


def test_segment_stream_checks_the_entries_against_the_ref() -> None:
    entries, batches = make_log(6, 20)
    last = batches[-1].last_offset

    async def collect(ref: LedgerRef) -> bytes:
        stream = SegmentStream(BuildSpec(ref, (), (), 4096, 8), owner_entries(entries))
        return b"".join([bytes(c) async for c in stream.chunks()])

    good = asyncio.run(collect(LedgerRef(3, 0, last, 1, closed=True)))
    assert verify_object(good).last_offset == last
    with pytest.raises(BuildError, match="its ref says"):
        asyncio.run(collect(LedgerRef(3, 0, last + 5, 1, closed=True)))
    damaged = bytearray(entries[3])
    damaged[-1] ^= 0xFF
    with pytest.raises(BuildError):
        stream = SegmentStream(BuildSpec(LedgerRef(3, 0, last, 1, closed=True), (), (), 4096, 8),
                               owner_entries([*entries[:3], bytes(damaged)]))  # fmt: skip

        async def drain() -> None:
            async for _chunk in stream.chunks():
                pass

        asyncio.run(drain())
