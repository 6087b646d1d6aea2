"""The segment object: a sealed ledger's record batches byte-for-byte, an index, a producer snapshot, a footer.

Layout (big-endian; documented in docs/data-formats.md, "Segment object")::

    [0, data_length)                 the batches of every entry of the ledger, in offset order
    [data_length, +24 * count)       index: (base_offset i64, position u64, max_ts_before i64) per sample
    [snapshot_pos, +snapshot_len)    producer snapshot: msgpack list of ProducerSnapshotEntry.to_list(); with
                                     footer flag TXN_INDEX, a msgpack map {"producers": that list, "aborted":
                                     [[producer_id, first_offset, marker_offset], ...]}: the aborted-transaction
                                     index of the segment (transactions whose ABORT marker it holds)
    [size - 88, size)                footer (FOOTER below)

An index sample is taken at the first batch and then at the first batch starting at least
``index_interval`` bytes (64 KiB) after the previous sample; ``max_ts_before`` is the running maximum of the
batches' max timestamps *before* the sampled batch, so the first batch with a max timestamp >= t lies at or
after the last sample whose ``max_ts_before`` < t. The footer's ``checksum`` is the xxh64 of every byte of
the object before it; ``meta_checksum`` the xxh64 of the index and snapshot, so a reader can trust the
index without reading the data.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import xxhash

from metadata.models import ProducerSnapshotEntry
from storage import log_entry
from storage.segment.batches import BadBatch, BatchFrame, ProducerStateBuilder, iter_frames

MAGIC = b"TLSEGMT1"
FORMAT_VERSION = 1
FOOTER = struct.Struct(">8sHHIqqqQQIIQQQ")
FOOTER_SIZE = FOOTER.size
INDEX_ENTRY = struct.Struct(">qQq")
DEFAULT_INDEX_INTERVAL = 64 * 1024
SUFFIX = ".seg"
TXN_INDEX = 0x1
"""Footer flag: the snapshot section is a map carrying the aborted-transaction index too. Segments written
before transactions existed have no flag (and no aborted transactions)."""


class CorruptSegment(ValueError):
    """A segment object (or the bytes offered to build one) that does not hold together."""


def partition_prefix(cluster: str, topic_id: str, partition: int) -> str:
    """The object-key prefix of one partition's segments (ends with ``/``)."""
    return f"{cluster}/topics/{topic_id}/{partition}/"


def object_key(cluster: str, topic_id: str, partition: int, base_offset: int, ledger_id: int) -> str:
    """The object key of the segment made from ``ledger_id`` (design §4): fixed before any upload."""
    return f"{partition_prefix(cluster, topic_id, partition)}{base_offset:020d}-{ledger_id}{SUFFIX}"


@dataclass(frozen=True, slots=True)
class SegmentFooter:
    """The fixed-size trailer of a segment object."""

    base_offset: int
    last_offset: int
    max_timestamp: int
    data_length: int
    index_count: int
    snapshot_position: int
    snapshot_length: int
    batch_count: int
    ledger_id: int
    meta_checksum: int
    checksum: int
    version: int = FORMAT_VERSION
    flags: int = 0

    @property
    def object_size(self) -> int:
        return self.snapshot_position + self.snapshot_length + FOOTER_SIZE

    def pack_without_checksum(self) -> bytes:
        return FOOTER.pack(
            MAGIC, self.version, self.flags, self.index_count, self.base_offset, self.last_offset, self.max_timestamp,
            self.data_length, self.snapshot_position, self.snapshot_length, self.batch_count, self.ledger_id,
            self.meta_checksum, 0,
        )[: FOOTER_SIZE - 8]  # fmt: skip

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview, object_size: int | None = None) -> SegmentFooter:
        """Parse the last FOOTER_SIZE bytes of ``buf``; checks magic, version and internal consistency."""
        if len(buf) < FOOTER_SIZE:
            raise CorruptSegment(f"segment tail of {len(buf)} bytes is shorter than the footer")
        fields = FOOTER.unpack_from(buf, len(buf) - FOOTER_SIZE)
        magic, version, flags, count, base, last, max_ts, data_len, snap_pos, snap_len, batches, ledger = fields[:12]
        if magic != MAGIC:
            raise CorruptSegment(f"bad segment magic {magic!r}")
        if version != FORMAT_VERSION:
            raise CorruptSegment(f"segment format version {version} is not {FORMAT_VERSION}")
        footer = cls(base, last, max_ts, data_len, count, snap_pos, snap_len, batches, ledger, fields[12],
                     fields[13], version, flags)  # fmt: skip
        if snap_pos != data_len + count * INDEX_ENTRY.size or (count == 0) != (data_len == 0) or last < base - 1:
            raise CorruptSegment("segment footer sections do not line up")
        if object_size is not None and footer.object_size != object_size:
            raise CorruptSegment(f"segment footer describes {footer.object_size} bytes, object has {object_size}")
        return footer


@dataclass(frozen=True, slots=True)
class SegmentIndex:
    """The parsed index of one segment: sampled batch starts, by offset and by running max timestamp."""

    base_offsets: tuple[int, ...]
    positions: tuple[int, ...]
    max_ts_before: tuple[int, ...]
    data_length: int

    def position_for_offset(self, offset: int) -> int:
        """Start of the sampled batch from which to scan for ``offset`` (0 if below the first)."""
        i = bisect.bisect_right(self.base_offsets, offset) - 1
        return self.positions[i] if i >= 0 else 0

    def position_for_timestamp(self, timestamp: int) -> int:
        """Start of the sampled batch from which the first batch with max timestamp >= ``timestamp`` lies."""
        i = bisect.bisect_left(self.max_ts_before, timestamp) - 1  # running max: non-decreasing
        return self.positions[i] if i >= 0 else 0


def parse_tail(tail: bytes | memoryview, record_size: int, data_length: int) -> tuple[SegmentFooter, SegmentIndex]:
    """Footer and index from the object's bytes ``[data_length, record_size)``; checks ``meta_checksum``."""
    view = memoryview(tail)
    if len(view) != record_size - data_length:
        raise CorruptSegment(f"segment tail is {len(view)} bytes, expected {record_size - data_length}")
    footer = SegmentFooter.parse(view, record_size)
    if footer.data_length != data_length:
        raise CorruptSegment(f"segment footer says data ends at {footer.data_length}, metadata says {data_length}")
    meta = view[: len(view) - FOOTER_SIZE]
    if xxhash.xxh64_intdigest(meta) != footer.meta_checksum:
        raise CorruptSegment("segment index/snapshot checksum mismatch")
    return footer, _parse_index(meta[: footer.index_count * INDEX_ENTRY.size], data_length)


def _parse_index(buf: memoryview, data_length: int) -> SegmentIndex:
    bases: list[int] = []
    positions: list[int] = []
    max_ts: list[int] = []
    for base, pos, ts in INDEX_ENTRY.iter_unpack(buf):
        bases.append(base)
        positions.append(pos)
        max_ts.append(ts)
    for i in range(1, len(bases)):
        if bases[i] <= bases[i - 1] or positions[i] <= positions[i - 1] or max_ts[i] < max_ts[i - 1]:
            raise CorruptSegment(f"segment index is not increasing at entry {i}")
    if positions and (positions[0] != 0 or positions[-1] >= data_length):
        raise CorruptSegment("segment index positions fall outside the data")
    return SegmentIndex(tuple(bases), tuple(positions), tuple(max_ts), data_length)


def _snapshot_section(tail: bytes | memoryview, footer: SegmentFooter) -> tuple[list[Any], list[Any]]:
    start = footer.snapshot_position - footer.data_length
    raw: Any = msgpack.unpackb(bytes(memoryview(tail)[start : start + footer.snapshot_length]), raw=False)
    if footer.flags & TXN_INDEX:
        if not isinstance(raw, dict):
            raise CorruptSegment("segment snapshot section is not a map")
        raw, aborted = raw.get("producers", []), raw.get("aborted", [])
    else:
        aborted = []
    if not isinstance(raw, list) or not isinstance(aborted, list):
        raise CorruptSegment("segment producer snapshot is not a list")
    return raw, aborted


def parse_snapshot(tail: bytes | memoryview, footer: SegmentFooter) -> tuple[ProducerSnapshotEntry, ...]:
    """The producer snapshot inside ``tail`` (the object's bytes from ``footer.data_length``)."""
    try:
        return tuple(ProducerSnapshotEntry.from_list(v) for v in _snapshot_section(tail, footer)[0])
    except (TypeError, ValueError, IndexError) as exc:
        raise CorruptSegment(f"segment producer snapshot: {exc}") from exc


def parse_aborted(tail: bytes | memoryview, footer: SegmentFooter) -> tuple[tuple[int, int, int], ...]:
    """The segment's aborted-transaction index: (producer_id, first offset, marker offset), in marker order."""
    try:
        return tuple((int(a), int(b), int(c)) for a, b, c in _snapshot_section(tail, footer)[1])
    except (TypeError, ValueError) as exc:
        raise CorruptSegment(f"segment aborted-transaction index: {exc}") from exc


def verify_object(data: bytes | memoryview) -> SegmentFooter:
    """Check a whole segment object: footer, section layout and the xxh64 of everything before it."""
    view = memoryview(data)
    footer = SegmentFooter.parse(view, len(view))
    if xxhash.xxh64_intdigest(view[: len(view) - 8]) != footer.checksum:
        raise CorruptSegment("segment checksum mismatch")
    parse_tail(view[footer.data_length :], len(view), footer.data_length)
    return footer


class SegmentWriter:
    """Builds one segment object in a single growing buffer, entry by entry (no second copy of the data).

    ``append_entry`` takes ledger entries (``storage/log_entry.py``), checks their CRC-32C and framing, and
    copies their batches in; ``finish`` appends index, snapshot and footer and returns the object as a view
    of the buffer. ``buffer`` lends the writer a reusable arena (written from its start, never shrunk): a fresh
    buffer of a whole ledger costs the kernel a page fault and a zeroed page per 4 KiB, more than the copy.
    The arena must not be reused or resized while the returned view is alive.
    """

    def __init__(
        self,
        base_offset: int,
        ledger_id: int,
        *,
        producers: Iterable[ProducerSnapshotEntry] = (),
        aborted: Iterable[tuple[int, int, int]] = (),
        index_interval: int = DEFAULT_INDEX_INTERVAL,
        size_hint: int = 0,
        buffer: bytearray | None = None,
    ) -> None:
        self._base = base_offset
        self._ledger_id = ledger_id
        self._interval = index_interval
        self._lent = buffer is not None
        self._buf = buffer if buffer is not None else bytearray(size_hint)
        self._pos = 0
        self._index = bytearray()
        self._index_count = 0
        self._last_sample = -index_interval
        self._last_offset = base_offset - 1
        self._first_batch_offset = -1
        self._max_ts = -1
        self._batches = 0
        self._producers = ProducerStateBuilder(producers)
        self._aborted = tuple(aborted)
        self._finished = False

    @property
    def data_length(self) -> int:
        return self._pos

    @property
    def last_offset(self) -> int:
        """The last offset appended (``base_offset - 1`` while empty)."""
        return self._last_offset

    @property
    def first_batch_offset(self) -> int:
        """Base offset of the first batch appended (-1 while empty)."""
        return self._first_batch_offset

    @property
    def max_timestamp(self) -> int:
        return self._max_ts

    @property
    def batch_count(self) -> int:
        return self._batches

    @property
    def aborted(self) -> tuple[tuple[int, int, int], ...]:
        """The aborted-transaction index written into the segment (given by the offloader, which has it from
        the partition state: transactions whose ABORT marker falls in the ledger)."""
        return self._aborted

    def append_entry(self, entry: bytes | memoryview) -> None:
        """Append one ledger entry's batches after checking its CRC-32C, header and batch framing."""
        try:
            log_entry.verify(entry)
            head = log_entry.decode_header(entry)
        except log_entry.CorruptLogEntry as exc:
            raise CorruptSegment(f"ledger {self._ledger_id}: {exc}") from exc
        batches = log_entry.batches_of(entry)
        frames = self._frames(batches)
        if not frames or frames[0].base_offset != head.first_offset or frames[-1].last_offset != head.last_offset:
            raise CorruptSegment(
                f"ledger {self._ledger_id}: entry header says offsets {head.first_offset}..{head.last_offset}, "
                f"its batches disagree"
            )
        self._append(batches, frames)

    def append_batches(self, batches: bytes | memoryview) -> None:
        """Append whole record batches (already offset-assigned) directly."""
        view = memoryview(batches)
        self._append(view, self._frames(view))

    def _frames(self, batches: memoryview) -> list[BatchFrame]:
        try:
            frames = list(iter_frames(batches))
        except BadBatch as exc:
            raise CorruptSegment(f"ledger {self._ledger_id}: {exc}") from exc
        last = self._last_offset
        for frame in frames:
            if frame.base_offset <= last or frame.last_offset < frame.base_offset:
                raise CorruptSegment(
                    f"ledger {self._ledger_id}: batch offsets {frame.base_offset}..{frame.last_offset} "
                    f"do not follow {last}"
                )
            last = frame.last_offset
        return frames

    def _append(self, batches: memoryview, frames: list[BatchFrame]) -> None:
        if self._finished:
            raise RuntimeError("segment already finished")
        start = self._pos
        end = start + len(batches)
        self._place(batches, start, end)
        for frame in frames:
            position = start + frame.position
            if position - self._last_sample >= self._interval:
                self._index += INDEX_ENTRY.pack(frame.base_offset, position, self._max_ts)
                self._index_count += 1
                self._last_sample = position
            self._max_ts = max(self._max_ts, frame.max_timestamp)
            self._producers.record(batches, frame)
        self._pos = end
        self._batches += len(frames)
        if frames:
            if self._first_batch_offset < 0:
                self._first_batch_offset = frames[0].base_offset
            self._last_offset = frames[-1].last_offset

    def _place(self, batches: memoryview, start: int, end: int) -> None:
        """Put the data bytes ``[start, end)`` of the object (here: copied into the buffer)."""
        if end > len(self._buf):
            self._buf.extend(bytes(max(end - len(self._buf), len(self._buf) // 2)))
        self._buf[start:end] = batches

    def _tail(self) -> bytes:
        """Index, snapshot and footer without its checksum: the object's bytes after the data but the last 8."""
        if self._finished:
            raise RuntimeError("segment already finished")
        self._finished = True
        pos = self._pos
        producers = [e.to_list() for e in self._producers.snapshot()]
        flags = TXN_INDEX if self._aborted else 0  # without aborted transactions: the layout older readers know
        section: Any = {"producers": producers, "aborted": [list(t) for t in self._aborted]} if flags else producers
        snapshot = msgpack.packb(section, use_bin_type=True)
        meta = bytes(self._index) + snapshot
        footer = SegmentFooter(
            self._base, self._last_offset, self._max_ts, pos, self._index_count,
            pos + len(self._index), len(snapshot), self._batches, self._ledger_id,
            xxhash.xxh64_intdigest(meta), 0, FORMAT_VERSION, flags,
        )  # fmt: skip
        return meta + footer.pack_without_checksum()

    def finish(self) -> memoryview:
        """The complete object: a view of the writer's buffer, extended in place with index, snapshot, footer."""
        tail = self._tail()
        buf, pos = self._buf, self._pos
        size = pos + len(tail) + 8
        if not self._lent:
            del buf[size:]  # an own buffer is trimmed; a lent arena keeps its capacity
        if len(buf) < size:
            buf.extend(bytes(size - len(buf)))
        buf[pos : size - 8] = tail
        view = memoryview(buf)
        buf[size - 8 : size] = xxhash.xxh64_intdigest(view[: size - 8]).to_bytes(8, "big")
        self._buf = bytearray()
        return view[:size]

    def snapshot(self) -> tuple[ProducerSnapshotEntry, ...]:
        """The producer state after everything appended so far."""
        return self._producers.snapshot()


class StreamingSegmentWriter(SegmentWriter):
    """A SegmentWriter that copies nothing: each appended entry's batches are handed out as they come
    (``take_chunks``) and hashed on the way, so a segment is uploaded in pieces and never held whole.

    The bytes it hands out, in order, are exactly the object ``SegmentWriter.finish`` would build from the
    same entries. The chunks are views of the entries given: keep those alive and unchanged until uploaded.
    """

    def __init__(
        self,
        base_offset: int,
        ledger_id: int,
        *,
        producers: Iterable[ProducerSnapshotEntry] = (),
        aborted: Iterable[tuple[int, int, int]] = (),
        index_interval: int = DEFAULT_INDEX_INTERVAL,
    ) -> None:
        super().__init__(
            base_offset, ledger_id, producers=producers, aborted=aborted, index_interval=index_interval,
            buffer=bytearray(),
        )  # fmt: skip
        self._hasher = xxhash.xxh64()
        self._chunks: list[memoryview] = []

    def _place(self, batches: memoryview, start: int, end: int) -> None:
        self._hasher.update(batches)
        self._chunks.append(batches)

    def take_chunks(self) -> list[memoryview]:
        """The data bytes appended since the last call, in order."""
        chunks, self._chunks = self._chunks, []
        return chunks

    def finish_tail(self) -> bytes:
        """The object's last bytes (index, snapshot, footer with the checksum of the whole object)."""
        tail = self._tail()
        self._hasher.update(tail)
        return tail + self._hasher.intdigest().to_bytes(8, "big")
