"""Transaction state of a partition (brokers/log/txn_state.py), control batches (brokers/codec/control.py), and
the encodings that carry them: PartitionState's snapshot fields and the segment's aborted-transaction index."""

from __future__ import annotations

import struct

import crc32c
import pytest

from brokers.codec.batch import TRANSACTIONAL_FLAG, iter_headers, validate
from brokers.codec.builder import build_batch
from brokers.codec.control import ABORT, COMMIT, build_marker, marker_coordinator_epoch, marker_type
from brokers.log.txn_state import TxnState
from metadata.models import LedgerRef, PartitionState, SegmentRecord
from storage.segment.format import TXN_INDEX, SegmentFooter, SegmentWriter, parse_aborted, parse_snapshot, verify_object
from tests.segment_data import make_batch


def txn_batch(producer_id: int, epoch: int = 0, seq: int = 0, records: int = 2) -> bytes:
    """A transactional data batch (offsets from 0) of ``records`` records."""
    buf = bytearray(build_batch([(None, b"v%d" % i) for i in range(records)], 1000, producer_id, epoch,
                                TRANSACTIONAL_FLAG))  # fmt: skip
    struct.pack_into(">i", buf, 53, seq)
    struct.pack_into(">I", buf, 17, crc32c.crc32c(bytes(buf[21:])))
    return bytes(buf)


def test_marker_round_trip() -> None:
    for commit, kind in ((True, COMMIT), (False, ABORT)):
        data = build_marker(7, 3, commit, 42, 1234)
        (head,) = validate(data)  # framing and CRC hold
        assert head.is_control and head.is_transactional and head.base_sequence == -1
        assert (head.producer_id, head.producer_epoch, head.records_count) == (7, 3, 1)
        assert marker_type(data, head) == kind
        assert marker_coordinator_epoch(data, head) == 42
    plain = make_batch(0, 2, 1000)
    assert marker_type(plain, iter_headers(plain)[0]) is None


def _feed(state: TxnState, batches: list[bytes], offset: int) -> int:
    for data in batches:
        heads = iter_headers(data)
        state.apply(data, heads, offset)
        offset += sum(h.record_span for h in heads)
    return offset


def test_open_commit_abort_and_index_queries() -> None:
    state = TxnState()
    end = _feed(state, [txn_batch(1), make_batch(0, 1, 1000), txn_batch(2), txn_batch(1, seq=2)], 10)
    assert state.ongoing == {1: 10, 2: 13} and state.first_unstable() == 10 and end == 17
    end = _feed(state, [build_marker(1, 0, True, 0, 0)], end)  # commit of 1 at offset 17
    assert state.ongoing == {2: 13} and state.aborted == []
    end = _feed(state, [build_marker(2, 0, False, 0, 0)], end)  # abort of 2 at 18
    assert state.ongoing == {} and state.first_unstable() is None
    assert state.aborted == [(2, 13, 18)]
    assert state.aborted_between(0, 13) == []  # ends before the transaction starts
    assert state.aborted_between(0, 14) == [(2, 13)]
    assert state.aborted_between(18, 30) == [(2, 13)]  # the marker itself overlaps
    assert state.aborted_between(19, 30) == []
    # a marker for a producer with nothing open changes nothing; an unknown control type neither
    _feed(state, [build_marker(9, 0, False, 0, 0)], end)
    assert state.aborted == [(2, 13, 18)]
    state.trim(18)
    assert state.aborted == [(2, 13, 18)]
    state.trim(19)
    assert state.aborted == [] and state.aborted_between(0, 100) == []


def test_index_scan_stops_after_the_longest_span() -> None:
    state = TxnState()
    offset = 0
    for pid in range(50):
        offset = _feed(state, [txn_batch(pid), build_marker(pid, 0, False, 0, 0)], offset)
    assert len(state.aborted) == 50
    assert state.aborted_between(30, 33) == [(10, 30)]
    assert state.aborted_between(0, 1000) == [(p, 3 * p) for p in range(50)]


def test_copy_without_index_keeps_only_open_transactions() -> None:
    state = TxnState([(5, 100)], [(4, 10, 20)])
    light = state.copy(index=False)
    assert light.ongoing == {5: 100} and light.aborted == []
    _feed(light, [build_marker(5, 0, False, 0, 0)], 200)
    assert light.ongoing == {} and light.aborted == []
    assert state.ongoing == {5: 100}  # a copy, not a view


def test_partition_state_carries_transactions_and_reads_old_encodings() -> None:
    state = PartitionState(epoch=3, ledgers=(LedgerRef(1, 0, 99, 5, True),), txn_ongoing=((7, 50),),
                           txn_aborted=((8, 10, 20),))  # fmt: skip
    assert PartitionState.decode(state.encode()) == state
    old = PartitionState(epoch=3, ledgers=(LedgerRef(1, 0, 99, 5, True),))
    assert b"txns" not in old.encode() and b"aborted" not in old.encode()  # unchanged bytes without transactions
    assert PartitionState.decode(old.encode()).txn_ongoing == ()


def test_state_trims_aborted_transactions_of_offloaded_ledgers() -> None:
    ledgers = (LedgerRef(1, 0, 49, 5, True, offloaded=True), LedgerRef(2, 50, 99, 5, True), LedgerRef(3, 100))
    state = PartitionState(ledgers=ledgers, txn_aborted=((1, 10, 20), (2, 40, 60), (3, 70, 80)))
    assert state.txn_floor == 50
    assert state.with_txns_trimmed().txn_aborted == ((2, 40, 60), (3, 70, 80))
    all_gone = PartitionState(ledgers=(LedgerRef(1, 0, 99, 5, True, offloaded=True),), txn_aborted=((1, 0, 99),))
    assert all_gone.txn_floor == 100 and all_gone.with_txns_trimmed().txn_aborted == ()
    assert PartitionState(log_start_offset=90, ledgers=ledgers[1:], txn_aborted=((2, 40, 60),)).txn_floor == 90


def test_segment_record_counts_round_trip() -> None:
    record = SegmentRecord(0, 99, 1, "k", 10, 5, 1, 2, 3, aborted=2, aborted_first=7)
    assert SegmentRecord.decode(record.encode()) == record
    plain = SegmentRecord(0, 99, 1, "k", 10, 5, 1, 2, 3)
    assert b"aborted" not in plain.encode() and SegmentRecord.decode(plain.encode()) == plain


@pytest.mark.parametrize("aborted", [(), ((3, 0, 2), (4, 1, 5))])
def test_segment_carries_its_aborted_index(aborted: tuple[tuple[int, int, int], ...]) -> None:
    writer = SegmentWriter(0, 1, aborted=aborted)
    writer.append_batches(make_batch(0, 3, 1000, producer_id=3, producer_epoch=0, base_sequence=0))
    writer.append_batches(make_batch(3, 3, 1000))
    obj = bytes(writer.finish())
    footer = verify_object(obj)
    assert bool(footer.flags & TXN_INDEX) == bool(aborted)
    tail = obj[footer.data_length :]
    assert parse_aborted(tail, footer) == aborted
    assert [e.producer_id for e in parse_snapshot(tail, footer)] == [3]
    assert SegmentFooter.parse(obj, len(obj)) == footer
