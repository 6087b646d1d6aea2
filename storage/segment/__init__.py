"""Segments: sealed ledgers in object storage (format, block cache, readers, a partition's segment list).

``format`` builds and parses segment objects, ``reader.SegmentReader`` reads one by offset or timestamp
through the shared ``cache.BlockCache``, and ``catalog.PartitionSegments`` reads a partition's segments as
one log. Storage reads only the 61-byte batch headers (``batches``); records are never decoded.
"""

from __future__ import annotations

from storage.segment.cache import BlockCache, CacheStats
from storage.segment.catalog import PartitionSegments, list_segments
from storage.segment.format import (
    CorruptSegment,
    SegmentFooter,
    SegmentIndex,
    SegmentWriter,
    object_key,
    partition_prefix,
    verify_object,
)
from storage.segment.reader import SegmentReader

__all__ = [
    "BlockCache",
    "CacheStats",
    "CorruptSegment",
    "PartitionSegments",
    "SegmentFooter",
    "SegmentIndex",
    "SegmentReader",
    "SegmentWriter",
    "list_segments",
    "object_key",
    "partition_prefix",
    "verify_object",
]
