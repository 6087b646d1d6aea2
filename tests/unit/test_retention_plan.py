"""plan_retention: Kafka's retention rules over whole segments (time, size, log start / DeleteRecords)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metadata.models import SegmentRecord
from storage.offload.retention import plan_retention

HOUR = 3_600_000


def segs(*specs: tuple[int, int, int, int]) -> list[SegmentRecord]:
    """(base, last, data bytes, max timestamp) each."""
    return [SegmentRecord(b, last, i + 1, f"k{i}", size + 100, size, ts, 0) for i, (b, last, size, ts) in
            enumerate(specs)]  # fmt: skip


SEGS = segs((0, 99, 1000, 1 * HOUR), (100, 199, 2000, 2 * HOUR), (200, 299, 3000, 3 * HOUR), (300, 399, 4000, 4 * HOUR))


def bases(plan_delete: tuple[SegmentRecord, ...]) -> list[int]:
    return [r.base_offset for r in plan_delete]


def test_nothing_configured_deletes_nothing() -> None:
    plan = plan_retention(SEGS, log_start_offset=0, now_ms=100 * HOUR)
    assert plan.delete == () and plan.log_start_offset == 0 and not plan.moves_start


def test_time_deletes_the_expired_prefix_and_stops_at_the_first_young_segment() -> None:
    plan = plan_retention(SEGS, log_start_offset=0, now_ms=5 * HOUR, retention_ms=int(2.5 * HOUR))
    assert bases(plan.delete) == [0, 100] and plan.log_start_offset == 200
    # a young segment stops the scan even if an older-stamped one follows (Kafka deletes a prefix only)
    odd = segs((0, 9, 10, 1 * HOUR), (10, 19, 10, 9 * HOUR), (20, 29, 10, 1 * HOUR))
    assert bases(plan_retention(odd, log_start_offset=0, now_ms=10 * HOUR, retention_ms=5 * HOUR).delete) == [0]
    # exactly retention_ms old is kept (Kafka: older than)
    assert plan_retention(SEGS, log_start_offset=0, now_ms=3 * HOUR, retention_ms=2 * HOUR).delete == ()


def test_size_counts_data_not_yet_offloaded() -> None:
    plan = plan_retention(SEGS, log_start_offset=0, now_ms=0, retention_bytes=7000)
    assert bases(plan.delete) == [0, 100]  # 10000 -> 9000 -> 7000
    plan = plan_retention(SEGS, log_start_offset=0, now_ms=0, retention_bytes=7000, unoffloaded_bytes=3000)
    assert bases(plan.delete) == [0, 100, 200]  # 13000 -> 12000 -> 10000 -> 7000
    assert plan.log_start_offset == 300
    everything = plan_retention(SEGS, log_start_offset=0, now_ms=0, retention_bytes=0)
    assert bases(everything.delete) == [0, 100, 200, 300] and everything.log_start_offset == 400


def test_delete_records_moves_the_start_exactly_and_drops_segments_wholly_below() -> None:
    plan = plan_retention(SEGS, log_start_offset=0, now_ms=0, delete_records_offset=250)
    assert bases(plan.delete) == [0, 100] and plan.log_start_offset == 250
    plan = plan_retention(SEGS, log_start_offset=0, now_ms=0, delete_records_offset=200)
    assert bases(plan.delete) == [0, 100] and plan.log_start_offset == 200
    # a start that is already past segments (moved earlier, objects not deleted yet) deletes them
    plan = plan_retention(SEGS, log_start_offset=150, now_ms=0)
    assert bases(plan.delete) == [0] and plan.log_start_offset == 150
    # the start never goes back
    assert plan_retention(SEGS, log_start_offset=150, now_ms=0, delete_records_offset=20).log_start_offset == 150


def test_rules_combine() -> None:
    # time takes segment 0 (4 h old), DeleteRecords sets the start inside segment 1
    plan = plan_retention(SEGS, log_start_offset=0, now_ms=5 * HOUR, retention_ms=int(3.5 * HOUR),
                          delete_records_offset=120)  # fmt: skip
    assert bases(plan.delete) == [0] and plan.log_start_offset == 120
    # ... and size then takes segment 1 too (9000 - 2000 >= 7000), which moves the start past 120
    plan = plan_retention(SEGS, log_start_offset=0, now_ms=5 * HOUR, retention_ms=int(3.5 * HOUR),
                          retention_bytes=7000, delete_records_offset=120)  # fmt: skip
    assert bases(plan.delete) == [0, 100] and plan.log_start_offset == 200


@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(0, 5000), st.integers(0, 10 * HOUR)), max_size=12),
    st.integers(-1, 20000),
    st.integers(-1, 10 * HOUR),
    st.one_of(st.none(), st.integers(0, 700)),
    st.integers(0, 5000),
)
def test_plan_properties(
    specs: list[tuple[int, int, int]], retention_bytes: int, retention_ms: int, delete_at: int | None, extra: int
) -> None:
    records: list[SegmentRecord] = []
    offset = 0
    for i, (count, size, ts) in enumerate(specs):
        records.append(SegmentRecord(offset, offset + count - 1, i, f"k{i}", size, size, ts, 0))
        offset += count
    plan = plan_retention(
        records, log_start_offset=0, now_ms=10 * HOUR, retention_ms=retention_ms, retention_bytes=retention_bytes,
        unoffloaded_bytes=extra, delete_records_offset=delete_at,
    )  # fmt: skip
    n = len(plan.delete)
    assert list(plan.delete) == records[:n]  # a prefix, oldest first
    kept = records[n:]
    assert plan.log_start_offset >= (delete_at or 0)
    assert all(r.last_offset >= plan.log_start_offset for r in kept)
    if n:
        assert plan.log_start_offset >= plan.delete[-1].last_offset + 1
    if kept and retention_bytes >= 0:
        first = kept[0]
        remaining = sum(r.data_length for r in kept) + extra
        expired = retention_ms >= 0 and 10 * HOUR - first.max_timestamp > retention_ms
        assert remaining - first.data_length < retention_bytes or expired or first.last_offset < plan.log_start_offset
