"""SegmentReader: whole record batches of one segment object, by offset or by timestamp.

Built from the segment's metadata record alone (any broker can serve offloaded data). The index (object
bytes from ``data_length`` to the end: index, snapshot, footer) is fetched with one ranged GET on first use
and kept. The data is cached in *blocks*: block boundaries are index samples (batch starts) at least
``block_size`` apart, so every block, and every ranged GET of consecutive blocks, covers whole batches, and
block numbers are stable. Blocks live in the shared BlockCache; concurrent reads of one block share one GET.

Sequential reads (the same block or the next one) make the reader fetch ahead: a *window* of blocks per
GET that doubles with each block the consumer moves on, up to ``max_get_blocks`` (16 MiB by default: the
ranged-GET size S3 guidance recommends for throughput; less if the cache budget is small), and
``read_ahead`` windows beyond the block being read, fetched in the background while the consumer handles
what it got. A random read starts over with one block per GET.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from metadata.models import ProducerSnapshotEntry, SegmentRecord
from storage.objectstore.api import ObjectStore
from storage.segment.batches import BadBatch, BatchFrame, frame_at
from storage.segment.cache import Block, BlockCache
from storage.segment.format import (
    CorruptSegment,
    SegmentFooter,
    SegmentIndex,
    parse_aborted,
    parse_snapshot,
    parse_tail,
)

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1024 * 1024
DEFAULT_READ_AHEAD = 2
DEFAULT_MAX_GET_BLOCKS = 16


class SegmentReader:
    """Reads one segment object through the shared block cache."""

    def __init__(
        self,
        store: ObjectStore,
        record: SegmentRecord,
        cache: BlockCache,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        read_ahead: int = DEFAULT_READ_AHEAD,
        max_get_blocks: int = DEFAULT_MAX_GET_BLOCKS,
    ) -> None:
        if block_size <= 0 or read_ahead < 0 or max_get_blocks < 1:
            raise ValueError("block_size must be > 0, read_ahead >= 0 and max_get_blocks >= 1")
        self._store = store
        self._record = record
        self._cache = cache
        self._block_size = block_size
        self._read_ahead = read_ahead
        # A sequential stream holds up to (1 + read_ahead) windows of blocks (each up to ~2x block_size, as
        # blocks end at index samples); keep that within half the cache budget, so read-ahead is not evicted
        # before it is read. A budget too small for read-ahead gets none.
        self._stream_blocks = cache.budget // (4 * block_size)
        self._max_window = max(1, min(max_get_blocks, self._stream_blocks // (1 + read_ahead)))
        self._window = 1
        self._tail: asyncio.Task[tuple[SegmentFooter, SegmentIndex, bytes]] | None = None
        self._bounds: list[int] = []
        self._last_block = -2
        self._prefetching: set[asyncio.Future[Block]] = set()
        self._own: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def record(self) -> SegmentRecord:
        return self._record

    @property
    def last_block(self) -> int:
        """The block the latest read ended in (-2 before any read)."""
        return self._last_block

    @property
    def near_end(self) -> bool:
        """Whether read-ahead from the latest read reaches this segment's last block."""
        return self.block_count > 0 and self._last_block + self._ahead() >= self.block_count - 1

    @property
    def window(self) -> int:
        """Blocks fetched per GET now (grows while reads are sequential)."""
        return self._window

    @property
    def block_count(self) -> int:
        """Number of data blocks (0 until the index is loaded)."""
        return max(len(self._bounds) - 1, 0)

    # --- index -----------------------------------------------------------------------------------
    async def index(self) -> SegmentIndex:
        """The segment's index (one ranged GET, shared by concurrent first callers, then kept)."""
        return (await self._load_tail())[1]

    async def footer(self) -> SegmentFooter:
        return (await self._load_tail())[0]

    async def producer_snapshot(self) -> tuple[ProducerSnapshotEntry, ...]:
        """The idempotent-producer state as of the end of this segment."""
        footer, _, tail = await self._load_tail()
        return parse_snapshot(tail, footer)

    async def aborted_transactions(self) -> tuple[tuple[int, int, int], ...]:
        """The segment's aborted-transaction index: (producer_id, first offset, ABORT marker offset) of every
        aborted transaction whose marker it holds (read_committed fetches of offloaded data)."""
        footer, _, tail = await self._load_tail()
        return parse_aborted(tail, footer)

    async def _load_tail(self) -> tuple[SegmentFooter, SegmentIndex, bytes]:
        if self._closed:
            raise RuntimeError("segment reader is closed")
        tail = self._tail
        if tail is None or (tail.done() and (tail.cancelled() or tail.exception() is not None)):
            self._tail = tail = asyncio.get_running_loop().create_task(self._fetch_tail())
        return await asyncio.shield(tail)

    async def _fetch_tail(self) -> tuple[SegmentFooter, SegmentIndex, bytes]:
        rec = self._record
        tail = await self._store.get_range(rec.object_key, rec.data_length, rec.size - rec.data_length)
        return self._take_tail(bytes(tail))  # small (index, snapshot): its own bytes, not a view of a buffer

    def _take_tail(self, tail: bytes) -> tuple[SegmentFooter, SegmentIndex, bytes]:
        rec = self._record
        footer, index = parse_tail(tail, rec.size, rec.data_length)
        if footer.checksum != rec.checksum or footer.base_offset != rec.base_offset:
            raise CorruptSegment(f"segment {rec.object_key}: footer does not match its metadata record")
        self._bounds = _block_bounds(index, self._block_size)
        return footer, index, tail

    @property
    def whole(self) -> bool:
        """Whether a sequential reader fetches this segment in one GET, index and data together: it is no
        bigger than one read-ahead window (8 MiB segments would otherwise cost two GETs in series each)."""
        return self._read_ahead > 0 and self._record.size <= self._max_window * self._block_size

    async def _fetch_whole(self) -> tuple[SegmentFooter, SegmentIndex, bytes]:
        """The whole object in one GET: its tail parsed as by ``_fetch_tail``, its blocks (slices of the one
        buffer) put in the cache unless cached or loading already."""
        rec = self._record
        data = await self._store.get_range(rec.object_key, 0, rec.size)
        if len(data) != rec.size:
            raise CorruptSegment(f"segment {rec.object_key}: got {len(data)} bytes, expected {rec.size}")
        view = memoryview(data)
        got = self._take_tail(bytes(view[rec.data_length :]))
        bounds = self._bounds
        for block in range(self.block_count):
            key = (rec.object_key, block)
            if key not in self._cache and self._cache.loading(key) is None:
                self._cache.put(key, view[bounds[block] : bounds[block + 1]])
        return got

    # --- reads -----------------------------------------------------------------------------------
    async def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        """Whole batches from the one holding ``offset``, up to ``max_bytes``; the first batch even if it is
        larger, as Kafka does. Empty if ``offset`` is past the segment's last offset; offsets below the
        segment's base read from its first batch."""
        return (await self.read_span(offset, max_bytes))[0]

    async def read_span(
        self, offset: int, max_bytes: int, *, at_least_one: bool = True
    ) -> tuple[list[memoryview], bool]:
        """Like ``read``; also says whether the segment's end was reached (nothing left out for size).
        With ``at_least_one`` false a first batch larger than ``max_bytes`` is not returned either."""
        if offset > self._record.last_offset or self._record.data_length == 0:
            return [], True
        index = await self.index()
        out: list[memoryview] = []
        total = 0
        async for frame, view in self._batches_from(index.position_for_offset(offset)):
            if frame.last_offset < offset:
                continue
            if total + frame.size > max_bytes and (out or not at_least_one):
                return out, False
            out.append(view)
            total += frame.size
            if total >= max_bytes:
                return out, frame.last_offset >= self._record.last_offset
        return out, True

    async def find_timestamp(self, timestamp: int) -> memoryview | None:
        """The first batch whose max timestamp is >= ``timestamp`` (it holds the first such record)."""
        if self._record.max_timestamp < timestamp or self._record.data_length == 0:
            return None
        index = await self.index()
        async for frame, view in self._batches_from(index.position_for_timestamp(timestamp)):
            if frame.max_timestamp >= timestamp:
                return view
        return None

    async def _batches_from(self, position: int) -> AsyncIterator[tuple[BatchFrame, memoryview]]:
        """Each batch (its frame, and a memoryview into its block) from the one starting at ``position`` on."""
        block = self._block_of(position)
        while block < self.block_count:
            start = self._bounds[block]
            data = memoryview(await self._block(block))
            pos = position - start if position > start else 0
            while pos < len(data):
                try:
                    frame: BatchFrame = frame_at(data, pos, len(data))
                except BadBatch as exc:
                    raise CorruptSegment(f"segment {self._record.object_key} block {block}: {exc}") from exc
                yield frame, data[pos : pos + frame.size]
                pos += frame.size
            block += 1

    def _block_of(self, position: int) -> int:
        return bisect.bisect_right(self._bounds, position) - 1

    async def _block(self, block: int) -> Block:
        if block == self._last_block + 1 or self._last_block == -2:
            if self._last_block != -2:
                self._window = min(self._window * 2, self._max_window)
            sequential = True
        else:
            sequential = block == self._last_block
            if not sequential:
                self._window = 1
        self._last_block = block
        self._fetch(block, 1 + self._ahead() if sequential else 1)
        key = (self._record.object_key, block)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        loading = self._cache.join(key)
        if loading is None:  # evicted between the fetch above and now (a tiny budget): fetch it alone
            return await self._cache.get_or_load(key, functools.partial(self._get_block, block))
        return await asyncio.shield(loading)

    def _ahead(self) -> int:
        """Blocks to have in flight beyond the one being read."""
        return min(self._read_ahead * self._window, max(0, self._stream_blocks - 1))

    async def _get_block(self, block: int) -> Block:
        return (await self._get_run(block, block))[0]

    async def _get_run(self, first: int, last: int) -> list[Block]:
        """Blocks ``first..last`` with one ranged GET, split at the block bounds."""
        start, end = self._bounds[first], self._bounds[last + 1]
        data = await self._store.get_range(self._record.object_key, start, end - start)
        if len(data) != end - start:
            raise CorruptSegment(
                f"segment {self._record.object_key}: blocks {first}..{last} are {len(data)} bytes, "
                f"expected {end - start}"
            )
        if first == last:
            return [data]
        view = memoryview(data)  # blocks are slices of the one buffer: no copy
        return [view[self._bounds[b] - start : self._bounds[b + 1] - start] for b in range(first, last + 1)]

    def _fetch(self, first: int, count: int) -> None:
        """Make sure the blocks ``first..first+count-1`` are cached or loading: GETs of runs of consecutive
        missing blocks, ``window`` blocks each. Block ``first`` is always fetched; a shorter run beyond it
        waits until it is a whole window (or reaches the segment's end), so read-ahead stays in large GETs."""
        if self._closed:
            return
        last = min(first + count, self.block_count) - 1
        run: list[int] = []
        for block in range(first, last + 1):
            key = (self._record.object_key, block)
            if key in self._cache or self._cache.loading(key) is not None:
                self._start_run(run, first)
                run = []
                continue
            run.append(block)
            if len(run) == self._window:
                self._start_run(run, first)
                run = []
        self._start_run(run, first, reaches_end=last == self.block_count - 1)

    def _start_run(self, blocks: list[int], needed: int, *, reaches_end: bool = False) -> None:
        if not blocks or not (len(blocks) == self._window or blocks[0] == needed or reaches_end):
            return
        keys = [(self._record.object_key, b) for b in blocks]
        for future in self._cache.load_run(keys, functools.partial(self._get_run, blocks[0], blocks[-1])):
            self._track(future)

    # --- read-ahead ------------------------------------------------------------------------------
    def prefetch(self, window: int | None = None) -> None:
        """Start loading the index and the first blocks in the background (a sequential reader about to
        reach this segment; a ``whole`` segment in one GET); ``window`` carries the previous segment's GET
        size over."""
        if self._closed or self._read_ahead <= 0:
            return
        if window is not None:
            self._window = max(1, min(window, self._max_window))
        loop = asyncio.get_running_loop()
        if self._tail is None and self.whole:  # now, so a read arriving before the task runs shares the GET
            self._tail = loop.create_task(self._fetch_whole())
        task = loop.create_task(self._prefetch_head())
        self._own.add(task)
        task.add_done_callback(self._own.discard)

    async def _prefetch_head(self) -> None:
        try:
            await self.index()
        except Exception as exc:
            log.debug("read-ahead of %s failed: %r", self._record.object_key, exc)
            return
        if self._last_block == -2:
            self._last_block = -1  # the next read, of block 0, continues the sequence
            self._fetch(0, self._ahead())

    def _track(self, future: asyncio.Future[Block]) -> None:
        self._prefetching.add(future)
        future.add_done_callback(self._prefetched)

    def _prefetched(self, future: asyncio.Future[Block]) -> None:
        self._prefetching.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.debug("read-ahead of %s failed: %r", self._record.object_key, future.exception())

    async def settle(self) -> None:
        """Wait until the read-ahead in flight has finished (tests, benchmarks, orderly shutdown)."""
        while self._own or self._prefetching:
            await asyncio.gather(*self._own, *self._prefetching, return_exceptions=True)

    async def close(self) -> None:
        """Stop this reader's own background work; block loads in flight finish into the shared cache
        (other readers may be waiting for them) and cached blocks stay."""
        self._closed = True
        own = [*self._own, *([self._tail] if self._tail is not None and not self._tail.done() else [])]
        for task in own:
            task.cancel()
        for task in own:
            with contextlib.suppress(BaseException):
                await task


def _block_bounds(index: SegmentIndex, block_size: int) -> list[int]:
    """Block start positions (index samples, so batch starts) at least ``block_size`` apart, then the end."""
    bounds: list[int] = []
    next_start = 0
    for position in index.positions:
        if position >= next_start:
            bounds.append(position)
            next_start = position + block_size
    if index.data_length > 0:
        bounds.append(index.data_length)
    return bounds
