"""Whole record batches from stored chunks, within a byte limit — Kafka's fetch size rule.

The log stores and caches entries (one produce request's batches for a partition) and hands them out as
chunks; a fetch must answer in whole batches: those below the fetch offset left out, and no more bytes than
the request's ``max_bytes`` / ``partition_max_bytes`` allow. The one exception (KIP-74): the first batch of
the first partition that returns anything is sent whole even when it is larger, so a consumer always makes
progress. A partition after that whose next batch does not fit gets nothing this time, which is what Kafka
answers from Fetch v3 on (it drops the incomplete batch it read).

Only the 12-byte framing (baseOffset, batchLength) and lastOffsetDelta of each batch are read, and only for
chunks that are the first one or do not fit whole; the returned views share the chunks' memory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from brokers.codec.batch import HEADER_SIZE, LOG_OVERHEAD

_FRAME = struct.Struct(">qi")  # baseOffset, batchLength
_LAST_DELTA = struct.Struct(">i")
_LAST_DELTA_AT = 23


def split_batches(chunk: memoryview, offset: int | None = None) -> Iterator[memoryview]:
    """The batches of ``chunk`` in order, leaving out those wholly below ``offset`` (if given). Framing that
    does not parse (never written by this broker: batches are validated before they are appended) ends the
    walk with the rest of the chunk as one piece rather than an error."""
    pos, end = 0, len(chunk)
    while pos < end:
        if end - pos < HEADER_SIZE:
            yield chunk[pos:]
            return
        base, length = _FRAME.unpack_from(chunk, pos)
        size = LOG_OVERHEAD + length
        if size < HEADER_SIZE or pos + size > end:
            yield chunk[pos:]
            return
        if offset is None or base + _LAST_DELTA.unpack_from(chunk, pos + _LAST_DELTA_AT)[0] >= offset:
            yield chunk[pos : pos + size]
        pos += size


def take_batches(chunks: Sequence[memoryview], offset: int, max_bytes: int, min_one: bool) -> list[memoryview]:
    """Whole batches from ``chunks`` (read from ``offset`` on) totalling at most ``max_bytes``; with
    ``min_one``, the first batch even if it alone is larger (and then nothing after it)."""
    out: list[memoryview] = []
    total = 0
    for i, chunk in enumerate(chunks):
        if i and total + len(chunk) <= max_bytes:
            out.append(chunk)  # later chunks start at a batch boundary above offset: no need to look inside
            total += len(chunk)
            continue
        for batch in split_batches(chunk, offset if i == 0 else None):
            if total + len(batch) > max_bytes and (out or not min_one):
                return out
            out.append(batch)
            total += len(batch)
    return out
