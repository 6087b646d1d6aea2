"""SegmentReader and PartitionSegments over an in-memory object store that records every ranged GET.

Checked: byte-exact whole batches from any offset, GETs that cover whole batches, the block cache and its
budget, read-ahead of the next blocks, one GET for concurrent reads of a block, lookups by timestamp,
and reading across segment boundaries.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio

from metadata.models import SegmentRecord
from storage.objectstore import MemoryObjectStore
from storage.segment.cache import BlockCache
from storage.segment.catalog import PartitionSegments
from storage.segment.format import CorruptSegment, SegmentFooter, SegmentWriter, object_key
from storage.segment.reader import SegmentReader
from tests.segment_data import Batch, make_log

KIB = 1024


class RecordingStore(MemoryObjectStore):
    """MemoryObjectStore that logs ranged GETs and can hold them at a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[str, int, int]] = []
        self.gate: asyncio.Event | None = None

    async def get_range(self, key: str, start: int, length: int) -> bytes | memoryview:
        self.ranges.append((key, start, length))
        if self.gate is not None:
            await self.gate.wait()
        return await super().get_range(key, start, length)


@pytest_asyncio.fixture
async def store() -> AsyncIterator[RecordingStore]:
    s = RecordingStore()
    yield s
    await s.close()


async def put_segment(
    store: RecordingStore, entries: list[bytes], *, base: int = 0, ledger: int = 1
) -> SegmentRecord:
    writer = SegmentWriter(base, ledger)
    for e in entries:
        writer.append_entry(e)
    obj = writer.finish()
    footer = SegmentFooter.parse(obj, len(obj))
    key = object_key("c", "topic", 0, base, ledger)
    await store.put(key, bytes(obj))
    return SegmentRecord(base, footer.last_offset, ledger, key, len(obj), footer.data_length, footer.max_timestamp,
                         footer.checksum)  # fmt: skip


def starts_of(batches: list[Batch]) -> dict[int, Batch]:
    out = {}
    pos = 0
    for b in batches:
        out[pos] = b
        pos += len(b.data)
    out[pos] = Batch(b"", -1, -1, -1)  # the end
    return out


def data_gets(store: RecordingStore, record: SegmentRecord) -> list[tuple[int, int]]:
    return [(s, n) for k, s, n in store.ranges if k == record.object_key and s < record.data_length]


@pytest.mark.asyncio
async def test_reads_whole_batches_byte_exact_from_any_offset(store: RecordingStore) -> None:
    entries, batches = make_log(11, 500, value_size=(200, 3000))
    record = await put_segment(store, entries)
    reader = SegmentReader(store, record, BlockCache(64 * 1024 * 1024), block_size=256 * KIB, read_ahead=2)
    rng = random.Random(11)
    for i in [0, 1, len(batches) - 1, *(rng.randrange(len(batches)) for _ in range(60))]:
        b = batches[i]
        offset = rng.randint(b.base_offset, b.last_offset)  # anywhere inside the batch
        max_bytes = rng.choice([1, 5000, 100_000, 2_000_000])
        got = await reader.read(offset, max_bytes)
        expected: list[bytes] = [b.data]
        total = len(b.data)
        for nxt in batches[i + 1 :]:
            if total + len(nxt.data) > max_bytes:
                break
            expected.append(nxt.data)
            total += len(nxt.data)
        assert [bytes(v) for v in got] == expected
    assert await reader.read(record.last_offset + 1, 1000) == []


@pytest.mark.asyncio
async def test_sequential_replay_returns_the_data_section_and_gets_cover_whole_batches(store: RecordingStore) -> None:
    entries, batches = make_log(12, 800, value_size=(100, 4000))
    record = await put_segment(store, entries)
    reader = SegmentReader(store, record, BlockCache(64 * 1024 * 1024), block_size=128 * KIB, read_ahead=3)
    out = bytearray()
    offset = 0
    while offset <= record.last_offset:
        got = await reader.read(offset, 300 * KIB)
        assert got
        for v in got:
            out += v
        offset = batches[[b.data for b in batches].index(bytes(got[-1]))].last_offset + 1
    assert bytes(out) == b"".join(b.data for b in batches)
    await reader.settle()
    starts = starts_of(batches)
    gets = data_gets(store, record)
    assert gets, "no data GETs recorded"
    for start, length in gets:
        assert start in starts and start + length in starts, (start, length)
        assert length >= 128 * KIB or start + length == record.data_length
    # the GETs tile the data exactly once (read-ahead and reads never fetched a block twice) ...
    covered = sorted(gets)
    assert covered[0][0] == 0 and sum(n for _, n in covered) == record.data_length
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(covered))
    # ... and grew while the reads were sequential: 1, 2, 4, 8 blocks, then max_get_blocks (16) at a time
    in_order = [n for _, n in sorted(gets)]
    assert max(in_order) >= 16 * 128 * KIB
    assert len(gets) < reader.block_count / 8
    tail_gets = [(s, n) for k, s, n in store.ranges if k == record.object_key and s >= record.data_length]
    assert tail_gets == [(record.data_length, record.size - record.data_length)]


@pytest.mark.asyncio
async def test_read_ahead_fetches_the_next_blocks_in_the_background(store: RecordingStore) -> None:
    entries, _ = make_log(13, 400, value_size=(1000, 3000))
    record = await put_segment(store, entries)
    cache = BlockCache(64 * 1024 * 1024)
    reader = SegmentReader(store, record, cache, block_size=64 * KIB, read_ahead=3)
    await reader.read(0, 1)
    await reader.settle()
    assert reader.block_count > 6
    assert [(record.object_key, b) in cache for b in range(6)] == [True] * 4 + [False] * 2
    fetched = len(data_gets(store, record))
    assert fetched == 4
    # the consumer now moves into block 1: served from the cache, and block 4 is fetched ahead
    await reader.read(record.last_offset // 4, 1)  # somewhere in a later block
    await reader.settle()
    assert len(data_gets(store, record)) > fetched


@pytest.mark.asyncio
async def test_without_read_ahead_only_the_block_read_is_fetched(store: RecordingStore) -> None:
    entries, _ = make_log(14, 200, value_size=(1000, 3000))
    record = await put_segment(store, entries)
    reader = SegmentReader(store, record, BlockCache(64 * 1024 * 1024), block_size=64 * KIB, read_ahead=0)
    await reader.read(0, 1)
    await reader.settle()
    assert len(data_gets(store, record)) == 1


@pytest.mark.asyncio
async def test_concurrent_reads_of_one_block_make_one_get(store: RecordingStore) -> None:
    entries, batches = make_log(15, 200, value_size=(500, 2000))
    record = await put_segment(store, entries)
    cache = BlockCache(64 * 1024 * 1024)
    readers = [SegmentReader(store, record, cache, block_size=1024 * KIB, read_ahead=0) for _ in range(3)]
    await readers[0].index()
    store.gate = asyncio.Event()
    tasks = [asyncio.create_task(r.read(batches[i * 3].base_offset, 10_000)) for r in readers for i in range(5)]
    await asyncio.sleep(0.01)
    store.gate.set()
    results = await asyncio.gather(*tasks)
    assert all(results)
    assert len(data_gets(store, record)) == 1
    assert cache.stats().coalesced >= 1


@pytest.mark.asyncio
async def test_the_second_pass_is_served_from_the_cache_within_its_budget(store: RecordingStore) -> None:
    entries, _ = make_log(16, 300, value_size=(500, 3000))
    record = await put_segment(store, entries)
    big = BlockCache(64 * 1024 * 1024)
    reader = SegmentReader(store, record, big, block_size=64 * KIB, read_ahead=1)
    first = [bytes(v) for v in await reader.read(0, 10**9)]
    await reader.settle()
    gets = len(store.ranges)
    assert [bytes(v) for v in await reader.read(0, 10**9)] == first
    assert len(store.ranges) == gets
    small = BlockCache(200 * KIB)
    reader2 = SegmentReader(store, record, small, block_size=64 * KIB, read_ahead=2)
    store.ranges.clear()
    assert [bytes(v) for v in await reader2.read(0, 10**9)] == first
    await reader2.settle()
    assert 0 < small.size <= 200 * KIB
    assert small.stats().evictions > 0
    # a small budget keeps GETs to single blocks (read-ahead must not outgrow the cache) and none repeats
    gets = data_gets(store, record)
    assert reader2.window == 1
    assert len(gets) == len(set(gets)) == reader2.block_count


@pytest.mark.asyncio
async def test_find_timestamp_returns_the_first_batch_reaching_it(store: RecordingStore) -> None:
    entries, batches = make_log(17, 300, value_size=(200, 3000), jitter_ms=300)
    record = await put_segment(store, entries)
    reader = SegmentReader(store, record, BlockCache(1024 * KIB), block_size=32 * KIB)
    rng = random.Random(17)
    lo = min(b.max_timestamp for b in batches)
    for ts in [lo - 100, lo, record.max_timestamp, *(rng.randint(lo, record.max_timestamp) for _ in range(40))]:
        expected = next(b.data for b in batches if b.max_timestamp >= ts)
        found = await reader.find_timestamp(ts)
        assert found is not None and bytes(found) == expected
    assert await reader.find_timestamp(record.max_timestamp + 1) is None


@pytest.mark.asyncio
async def test_a_batch_larger_than_a_block_is_read_whole(store: RecordingStore) -> None:
    entries, batches = make_log(18, 12, batches_per_entry=(1, 1), records_per_batch=(40, 60),
                                value_size=(5000, 8000))  # fmt: skip
    assert min(len(b.data) for b in batches) > 64 * KIB
    record = await put_segment(store, entries)
    reader = SegmentReader(store, record, BlockCache(8 * 1024 * KIB), block_size=64 * KIB, read_ahead=1)
    for b in batches:
        got = await reader.read(b.base_offset + 1, 1)
        assert [bytes(v) for v in got] == [b.data]
    await reader.settle()
    assert reader.block_count == len(batches)


@pytest.mark.asyncio
async def test_a_record_that_does_not_match_the_object_is_refused(store: RecordingStore) -> None:
    entries, _ = make_log(19, 20)
    record = await put_segment(store, entries)
    wrong = SegmentReader(store, replace(record, checksum=record.checksum ^ 1), BlockCache(KIB))
    with pytest.raises(CorruptSegment, match="does not match"):
        await wrong.read(0, 100)
    shifted = SegmentReader(store, replace(record, data_length=record.data_length - 1), BlockCache(KIB))
    with pytest.raises(CorruptSegment):
        await shifted.index()


async def put_segments(
    store: RecordingStore, count: int, *, seed: int, entries: int
) -> tuple[list[SegmentRecord], list[Batch], int]:
    """``count`` consecutive segments of ``entries`` entries each: their records, all batches, the end offset."""
    records: list[SegmentRecord] = []
    all_batches: list[Batch] = []
    offset = 0
    for ledger in range(1, count + 1):
        log_entries, batches = make_log(seed + ledger, entries, first_offset=offset, value_size=(500, 2000))
        records.append(await put_segment(store, log_entries, base=offset, ledger=ledger))
        all_batches.extend(batches)
        offset = batches[-1].last_offset + 1
    return records, all_batches, offset


async def read_all(segments: PartitionSegments, batches: list[Batch], end: int, max_bytes: int) -> bytes:
    """Everything from offset 0 to ``end``, read as a consumer would: ``max_bytes`` at a time."""
    out = bytearray()
    pos = 0
    while pos < end:
        got = await segments.read(pos, max_bytes)
        assert got and sum(len(v) for v in got) <= max(max_bytes, len(got[0]))
        for v in got:
            out += v
        last = next(b for b in batches if b.data == bytes(got[-1]))
        pos = last.last_offset + 1
    return bytes(out)


@pytest.mark.asyncio
async def test_partition_segments_read_across_segment_boundaries(store: RecordingStore) -> None:
    records, all_batches, offset = await put_segments(store, 4, seed=20, entries=60)
    cache = BlockCache(64 * 1024 * 1024)
    segments = PartitionSegments(store, cache, reversed(records), block_size=32 * KIB, read_ahead=2)
    assert (segments.start_offset, segments.end_offset) == (0, offset)
    # reading the end of segment 0 fetches segment 1's index and first blocks ahead
    await segments.read(records[0].last_offset, 1)
    await segments.settle()
    assert [(records[1].object_key, b) in cache for b in range(3)] == [True, True, False]
    assert (records[2].object_key, 0) not in cache
    assert segments.segment_for(records[2].base_offset) == records[2]
    assert await read_all(segments, all_batches, offset, 200 * KIB) == b"".join(b.data for b in all_batches)
    # each segment's index was fetched once
    tail_gets = [k for k, s, _ in store.ranges if any(r.object_key == k and s == r.data_length for r in records)]
    assert sorted(tail_gets) == sorted(r.object_key for r in records)
    found = await segments.find_timestamp(records[3].max_timestamp)
    assert found is not None and bytes(found) == next(b.data for b in all_batches
                                                      if b.max_timestamp >= records[3].max_timestamp)  # fmt: skip
    segments.remove([records[0].base_offset])
    assert segments.start_offset == records[1].base_offset
    assert all((records[0].object_key, b) not in cache for b in range(20))
    assert (records[1].object_key, 0) in cache
    await segments.settle()
    await segments.close()


@pytest.mark.asyncio
async def test_small_segments_are_fetched_whole_in_one_get_and_several_ahead(store: RecordingStore) -> None:
    records, all_batches, offset = await put_segments(store, 8, seed=10, entries=6)
    cache = BlockCache(64 * 1024 * 1024)
    segments = PartitionSegments(store, cache, records, block_size=32 * KIB, read_ahead=2, ahead_bytes=0)
    assert all(segments.reader(r).whole for r in records)  # each no bigger than one 16-block window
    # reading segment 0's end prefetches the next two small segments (``read_ahead``; no more with
    # ``ahead_bytes=0``), each with one whole-object GET
    await segments.read(records[0].last_offset, 1)
    await segments.settle()
    whole = [(r.object_key, 0, r.size) for r in records]
    assert [g for g in store.ranges if g in whole[1:]] == whole[1:3]
    for j in (1, 2):
        assert all((records[j].object_key, b) in cache for b in range(segments.reader(records[j]).block_count))
    assert not any(k == records[3].object_key for k, _, _ in store.ranges)
    assert await read_all(segments, all_batches, offset, 64 * KIB) == b"".join(b.data for b in all_batches)
    await segments.settle()
    # segments 1.. were each fetched with exactly one GET; segment 0 (read before any prefetch) by ranges
    for r in records[1:]:
        assert [(s, n) for k, s, n in store.ranges if k == r.object_key] == [(0, r.size)]
    await segments.close()


@pytest.mark.asyncio
async def test_small_segments_ahead_up_to_ahead_bytes_are_fetched_with_their_gets_in_flight_together(
    store: RecordingStore,
) -> None:
    records, all_batches, offset = await put_segments(store, 8, seed=20, entries=6)
    ahead = sum(r.size for r in records[1:5])  # room for segments 1-4 ahead, not 5
    segments = PartitionSegments(store, BlockCache(64 * 1024 * 1024), records, block_size=32 * KIB, read_ahead=2,
                                 ahead_bytes=ahead)  # fmt: skip
    await segments.read(records[0].last_offset, 1)  # segment 0 read; the prefetch of what follows is started
    store.gate = asyncio.Event()  # hold every GET the prefetch makes
    for _ in range(10):
        await asyncio.sleep(0)
    whole = [(r.object_key, 0, r.size) for r in records]
    # four whole-object GETs waiting at the gate at once: they overlap instead of following one another
    assert sorted(g for g in store.ranges if g in whole) == sorted(whole[1:5])
    store.gate.set()
    store.gate = None
    await segments.settle()
    assert not any(k in (r.object_key for r in records[5:]) for k, _, _ in store.ranges)
    assert await read_all(segments, all_batches, offset, 64 * KIB) == b"".join(b.data for b in all_batches)
    await segments.settle()
    for r in records[1:]:  # one GET each, the later ones prefetched as the reader moved on
        assert [(s, n) for k, s, n in store.ranges if k == r.object_key] == [(0, r.size)]
    await segments.close()


@pytest.mark.asyncio
async def test_ahead_bytes_are_capped_at_a_quarter_of_the_cache(store: RecordingStore) -> None:
    records, _all, _end = await put_segments(store, 8, seed=30, entries=6)
    budget = 12 * max(r.size for r in records)  # small segments are still fetched whole; a quarter: about three
    segments = PartitionSegments(store, BlockCache(budget), records, block_size=32 * KIB, read_ahead=1,
                                 ahead_bytes=1 << 40)  # fmt: skip
    assert all(segments.reader(r).whole for r in records)
    await segments.read(records[0].last_offset, 1)
    await segments.settle()
    whole = [(r.object_key, 0, r.size) for r in records]
    fetched = [g for g in store.ranges if g in whole]
    assert fetched == whole[1 : 1 + len(fetched)]  # in order from the next segment on
    assert 2 <= len(fetched) < len(records) - 1 and sum(n for _k, _s, n in fetched) <= budget // 4
    await segments.close()


@pytest.mark.asyncio
async def test_a_segment_larger_than_a_window_is_not_fetched_whole(store: RecordingStore) -> None:
    entries, _ = make_log(30, 60, value_size=(500, 2000))
    record = await put_segment(store, entries)
    reader = SegmentReader(store, record, BlockCache(64 * 1024 * 1024), block_size=8 * KIB, read_ahead=2)
    assert record.size > 16 * 8 * KIB and not reader.whole
    reader.prefetch()
    await reader.settle()
    assert (record.object_key, 0, record.size) not in store.ranges
    assert (record.object_key, record.data_length, record.size - record.data_length) in store.ranges
    await reader.close()
