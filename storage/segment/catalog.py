"""PartitionSegments: one partition's offloaded segments in offset order, read as one log.

The broker's partition log keeps one of these beside its ledger list: ``read`` continues from one segment
into the next until ``max_bytes``, and when a reader nears the end of its segment the next segment's index
and first blocks are fetched ahead, so a replay streams across segment boundaries without a stall.
Readers are opened lazily and at most ``max_readers`` are kept (least recently used dropped).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable

from metadata.api import MetadataStore
from metadata.keys import Keys
from metadata.models import SegmentRecord
from storage.objectstore.api import ObjectStore
from storage.segment.cache import BlockCache
from storage.segment.reader import DEFAULT_BLOCK_SIZE, DEFAULT_MAX_GET_BLOCKS, DEFAULT_READ_AHEAD, SegmentReader

DEFAULT_AHEAD_BYTES = 48 * 1024 * 1024
"""Small segments fetched ahead of a sequential reader, in bytes (capped at a quarter of the block cache)."""


async def list_segments(store: MetadataStore, keys: Keys, topic_id: str, partition: int) -> list[SegmentRecord]:
    """Every segment record of a partition, in offset order."""
    found = await store.list(keys.segments_prefix(topic_id, partition))
    return sorted((SegmentRecord.decode(v.value) for v in found), key=lambda r: r.base_offset)


class PartitionSegments:
    """The segments of one partition and lazily opened readers over them (sharing one BlockCache)."""

    def __init__(
        self,
        objects: ObjectStore,
        cache: BlockCache,
        records: Iterable[SegmentRecord] = (),
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        read_ahead: int = DEFAULT_READ_AHEAD,
        max_get_blocks: int = DEFAULT_MAX_GET_BLOCKS,
        max_readers: int = 32,
        ahead_bytes: int = DEFAULT_AHEAD_BYTES,
    ) -> None:
        self._objects = objects
        self._cache = cache
        self._block_size = block_size
        self._read_ahead = read_ahead
        self._max_get_blocks = max_get_blocks
        self._max_readers = max(1, max_readers)
        # Small segments prefetched ahead: at least ``read_ahead``, more while they total at most this (and
        # a quarter of the cache, one stream's share as in SegmentReader), so GETs overlap.
        self._ahead_bytes = max(0, min(ahead_bytes, cache.budget // 4))
        self._records: list[SegmentRecord] = []
        self._bases: list[int] = []
        self._readers: OrderedDict[int, SegmentReader] = OrderedDict()
        self.replace(records)

    @classmethod
    async def load(
        cls,
        store: MetadataStore,
        keys: Keys,
        topic_id: str,
        partition: int,
        objects: ObjectStore,
        cache: BlockCache,
        **options: int,
    ) -> PartitionSegments:
        """The partition's segments as listed in metadata now."""
        return cls(objects, cache, await list_segments(store, keys, topic_id, partition), **options)

    # --- the segment list ------------------------------------------------------------------------
    @property
    def records(self) -> tuple[SegmentRecord, ...]:
        return tuple(self._records)

    @property
    def start_offset(self) -> int | None:
        """Base offset of the first segment (None when there is none)."""
        return self._records[0].base_offset if self._records else None

    @property
    def end_offset(self) -> int | None:
        """Offset after the last segment's last record (None when there is none)."""
        return self._records[-1].last_offset + 1 if self._records else None

    @property
    def total_bytes(self) -> int:
        """Bytes of batches held in segments (index and footer not counted)."""
        return sum(r.data_length for r in self._records)

    def replace(self, records: Iterable[SegmentRecord]) -> None:
        """Set the segment list (e.g. after re-listing metadata); readers of vanished segments are dropped."""
        self._records = sorted(records, key=lambda r: r.base_offset)
        self._bases = [r.base_offset for r in self._records]
        live = {(r.base_offset, r.object_key) for r in self._records}
        for base in [b for b, rd in self._readers.items() if (b, rd.record.object_key) not in live]:
            self._drop_reader(base)

    def add(self, record: SegmentRecord) -> None:
        """A segment was committed (the offloader's result)."""
        self.replace([*(r for r in self._records if r.base_offset != record.base_offset), record])

    def remove(self, base_offsets: Iterable[int]) -> None:
        """Segments were deleted (retention); their cached blocks are dropped."""
        gone = set(base_offsets)
        self.replace(r for r in self._records if r.base_offset not in gone)

    def segment_for(self, offset: int) -> SegmentRecord | None:
        """The segment holding ``offset``, if any."""
        i = bisect.bisect_right(self._bases, offset) - 1
        if i >= 0 and offset <= self._records[i].last_offset:
            return self._records[i]
        return None

    # --- reads -----------------------------------------------------------------------------------
    async def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        """Whole batches from the one holding ``offset`` (or the next segment after a gap), across segment
        boundaries, up to ``max_bytes`` (at least one batch if any lies at or after ``offset``)."""
        i = max(bisect.bisect_right(self._bases, offset) - 1, 0)
        out: list[memoryview] = []
        total = 0
        while i < len(self._records):
            record = self._records[i]
            if offset <= record.last_offset:
                reader = self.reader(record)
                got, reached_end = await reader.read_span(offset, max_bytes - total, at_least_one=not out)
                out.extend(got)
                total += sum(len(v) for v in got)
                if reader.near_end:
                    self._prefetch_next(i)
                if total >= max_bytes or not reached_end:
                    break
                offset = record.last_offset + 1
            i += 1
        return out

    def _prefetch_next(self, i: int) -> None:
        """Prefetch the next segment; past small (``whole``) ones, at least ``read_ahead`` segments ahead and
        more while those ahead total at most ``ahead_bytes``: one whole-object GET each, several in flight
        (one GET at a time gets a single stream's bandwidth; a few at once get more from S3 and moto alike)."""
        window = self.reader(self._records[i]).window
        ahead = 0
        most = max(1, self._read_ahead, self._max_readers // 2)  # half the open readers, at least read_ahead
        for j in range(i + 1, min(i + 1 + most, len(self._records))):
            record = self._records[j]
            if j > i + max(1, self._read_ahead) and ahead + record.size > self._ahead_bytes:
                break
            nxt = self.reader(record)
            if nxt.last_block == -2:
                nxt.prefetch(window)
            if not nxt.whole:
                break
            ahead += record.size

    async def find_timestamp(self, timestamp: int) -> memoryview | None:
        """The first batch of any segment whose max timestamp is >= ``timestamp``."""
        for record in self._records:
            if record.max_timestamp >= timestamp:
                found = await self.reader(record).find_timestamp(timestamp)
                if found is not None:
                    return found
        return None

    def reader(self, record: SegmentRecord) -> SegmentReader:
        """The (cached) reader of ``record``."""
        reader = self._readers.get(record.base_offset)
        if reader is not None and reader.record == record:
            self._readers.move_to_end(record.base_offset)
            return reader
        reader = SegmentReader(
            self._objects, record, self._cache, block_size=self._block_size, read_ahead=self._read_ahead,
            max_get_blocks=self._max_get_blocks,
        )  # fmt: skip
        self._readers[record.base_offset] = reader
        while len(self._readers) > self._max_readers:
            self._drop_reader(next(iter(self._readers)))
        return reader

    def _drop_reader(self, base: int) -> None:
        reader = self._readers.pop(base)
        if all(r.object_key != reader.record.object_key for r in self._records):
            self._cache.discard_object(reader.record.object_key)

    async def settle(self) -> None:
        """Wait for read-ahead in flight on every open reader."""
        for reader in list(self._readers.values()):
            await reader.settle()

    async def close(self) -> None:
        for reader in list(self._readers.values()):
            await reader.close()
        self._readers.clear()
