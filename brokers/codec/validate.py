"""Producer batch validation as Kafka's LogValidator and ProduceRequest.validateRecords do it — sans-io.

The CRC only proves the bytes arrived as the producer wrote them, not that its header tells the truth. A
header that lies (codec 7, lastOffsetDelta 1,000,000 on one record, recordsCount unlike the records present)
would otherwise be appended and poison the partition for every reader. Checks, in Kafka's order:

- exactly one v2 batch per partition in a Produce v3+ request, base offset 0 (INVALID_RECORD);
- compression codec 0..4, zstd only from Produce v7 (UNSUPPORTED_COMPRESSION_TYPE);
- no control batch from a client, a producer id has a sequence, a transactional batch has a producer id,
  recordsCount >= 1 and == lastOffsetDelta + 1 (INVALID_RECORD);
- the records really are there: each record's varint length, attributes, timestamp delta and offset delta
  are read (keys, values and headers are skipped), the lengths must fill the records section exactly, the
  count must match, offset deltas must run 0..n-1 (INVALID_RECORD). Compressed batches are decompressed into
  a bounded scratch buffer (at most MAX_DECOMPRESSED_BYTES) and walked the same way;
- a producer may not set the LogAppendTime flag, and CreateTime timestamps lie within the topic's
  message.timestamp.before/after.max.ms of now (INVALID_TIMESTAMP, with record errors as Kafka fills them);
- a compacted topic takes only records with keys (INVALID_RECORD with record errors).

It returns the records' real maximum timestamp: the caller rewrites the header when it differs (as Kafka's
``setMaxTimestamp`` does), so the time index never trusts a claimed one.
"""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass

import cramjam

from brokers.codec.batch import (
    CONTROL_FLAG,
    HEADER_SIZE,
    TIMESTAMP_TYPE_FLAG,
    TRANSACTIONAL_FLAG,
    BatchError,
    BatchHeader,
)
from brokers.codec.stride_walk import max_timestamp_delta

NO_TIMESTAMP = -1
UNBOUNDED_MS = 2**63 - 1
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
"""A compressed batch may expand to at most this many bytes (Kafka streams and has no bound; we decompress
into one buffer, so a 1 MB zstd bomb must not become 30 GB)."""
ZSTD_MIN_PRODUCE_VERSION = 7
MAX_RECORD_ERRORS = 3  # record errors reported per batch; Kafka's message quotes at most three too
_RELEASE_ABOVE = 4 * 1024 * 1024  # scratch pages touched beyond this are given back after use
_XERIAL_MAGIC = b"\x82SNAPPY\x00"


class InvalidRecord(BatchError):
    """A batch Kafka refuses with INVALID_RECORD; ``record_errors`` are (batch index, message) pairs."""

    def __init__(self, message: str, record_errors: tuple[tuple[int, str], ...] = ()) -> None:
        super().__init__(message)
        self.record_errors = record_errors


class InvalidTimestamp(InvalidRecord):
    """A timestamp outside the topic's bounds, or a producer claiming LogAppendTime (INVALID_TIMESTAMP)."""


class UnsupportedCompression(BatchError):
    """Codec 5..7, or zstd in a Produce request older than v7 (UNSUPPORTED_COMPRESSION_TYPE)."""


@dataclass(frozen=True, slots=True)
class TopicRules:
    """What a topic allows, from its configs (``message.timestamp.*``, ``cleanup.policy``)."""

    log_append_time: bool = False
    before_max_ms: int = UNBOUNDED_MS
    after_max_ms: int = UNBOUNDED_MS
    compacted: bool = False

    @property
    def checks_timestamps(self) -> bool:
        return not self.log_append_time and (self.before_max_ms < UNBOUNDED_MS or self.after_max_ms < UNBOUNDED_MS)


@dataclass(frozen=True, slots=True)
class Checked:
    """What the walk found: the records' real maximum timestamp (NO_TIMESTAMP if none carries one)."""

    max_timestamp: int


def check_request_batches(headers: list[BatchHeader]) -> BatchHeader:
    """Produce v3+ carries exactly one batch per partition (ProduceRequest.validateRecords)."""
    if len(headers) != 1:
        raise InvalidRecord(f"Produce requests v3+ carry exactly one record batch per partition, got {len(headers)}")
    return headers[0]


def check_header(head: BatchHeader, produce_version: int) -> None:
    """The header rules that need no record bytes (LogValidator.validateBatch for AppendOrigin.CLIENT)."""
    codec = head.compression
    if codec > 4:
        raise UnsupportedCompression(f"unknown compression codec {codec} in the batch attributes")
    if codec == 4 and produce_version < ZSTD_MIN_PRODUCE_VERSION:
        raise UnsupportedCompression(f"Produce v{produce_version} may not use zstd (v7+ may)")
    if head.base_offset != 0:
        raise InvalidRecord(f"the base offset of a produced batch must be 0, it is {head.base_offset}")
    if head.attributes & CONTROL_FLAG:
        raise InvalidRecord("clients may not write control batches")
    if head.records_count <= 0:
        raise InvalidRecord(f"invalid record count {head.records_count}")
    if head.last_offset_delta + 1 != head.records_count:
        raise InvalidRecord(
            f"inconsistent batch: offset range [0, {head.last_offset_delta}] but {head.records_count} records"
        )
    if head.producer_id >= 0 and head.base_sequence < 0:
        raise InvalidRecord(f"invalid sequence {head.base_sequence} for producer id {head.producer_id}")
    if head.attributes & TRANSACTIONAL_FLAG and head.producer_id < 0:
        raise InvalidRecord("a transactional batch needs a producer id")


def validate_batch(
    buf: bytes | bytearray | memoryview, head: BatchHeader, rules: TopicRules, now_ms: int, produce_version: int
) -> Checked:
    """Every rule for one produced batch whose framing and CRC were checked. Raises BatchError subclasses."""
    check_header(head, produce_version)
    if head.attributes & TIMESTAMP_TYPE_FLAG:
        raise InvalidTimestamp(
            "producers may not set the timestamp type to LogAppendTime",
            ((0, "Invalid timestamp type in batch: producers may not set the timestamp type to LogAppendTime"),),
        )
    view = memoryview(buf)[head.position + HEADER_SIZE : head.position + head.size]
    if head.compression:
        scratch = _scratch()
        try:
            size = _decompress_into(head.compression, view, scratch.view)
            scratch.high = size
            return _walk(scratch.view[:size], head, rules, now_ms)
        finally:
            scratch.release()
    return _walk(view, head, rules, now_ms)


def _walk(body: memoryview, head: BatchHeader, rules: TopicRules, now_ms: int) -> Checked:
    """Read each record's length, attributes, timestamp and offset deltas; skip keys, values and headers."""
    end = len(body)
    count = head.records_count
    base_ts = head.base_timestamp
    check_ts = rules.checks_timestamps and base_ts != NO_TIMESTAMP
    low = now_ms - rules.before_max_ms if check_ts else 0
    high = now_ms + rules.after_max_ms if check_ts else 0
    compacted = rules.compacted
    if not check_ts and not compacted:
        delta = max_timestamp_delta(body, count)  # equally long records: checked by byte columns
        if delta is not None:
            return Checked(NO_TIMESTAMP if base_ts == NO_TIMESTAMP else base_ts + delta)
    ts_errors: list[tuple[int, str]] = []
    key_errors: list[tuple[int, str]] = []
    max_delta = -(2**63)
    pos = 0
    # Varints are decoded inline, one- and two-byte forms without a call: this loop runs once per record on
    # the produce path, and a call per field costs a third more (figures in docs/benchmarks.md).
    for i in range(count):
        if pos >= end:
            raise InvalidRecord(f"the batch claims {count} records but holds {i}")
        b = body[pos]
        if b < 0x80:
            length = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            c = body[pos + 1] if pos + 1 < end else 0x80
            if c < 0x80:
                raw = (b & 0x7F) | (c << 7)
                length = (raw >> 1) ^ -(raw & 1)
                pos += 2
            else:
                length, pos = _varint(body, pos + 1, b)
        rec_end = pos + length
        if length < 6 or rec_end > end:  # attributes, 3 varints, key and value lengths, header count
            raise InvalidRecord(f"record {i}: length {length} does not fit the {end - pos} bytes left")
        b = body[pos + 1]  # after the attributes byte: the timestamp delta
        if b < 0x80:
            ts_delta = (b >> 1) ^ -(b & 1)
            pos += 2
        else:
            c = body[pos + 2]
            if c < 0x80:
                raw = (b & 0x7F) | (c << 7)
                ts_delta = (raw >> 1) ^ -(raw & 1)
                pos += 3
            else:
                ts_delta, pos = _varint(body, pos + 2, b)
        if pos + 4 > rec_end:  # offset delta, key length, value length and header count follow
            raise InvalidRecord(f"record {i}: fields run past its length {length}")
        z = i << 1  # the offset delta must be i: compare with its zig-zag encoding
        if z < 0x80 and body[pos] == z:
            pos += 1
        elif 0x80 <= z < 0x4000 and body[pos] == (z & 0x7F) | 0x80 and body[pos + 1] == z >> 7:
            pos += 2
        else:
            b = body[pos]
            off_delta, pos = _varint(body, pos + 1, b) if b >= 0x80 else ((b >> 1) ^ -(b & 1), pos + 1)
            if off_delta != i:
                raise InvalidRecord(f"record {i} has offset delta {off_delta}; deltas must run 0..{count - 1}")
        if pos + 3 > rec_end:  # key length, value length and header count follow
            raise InvalidRecord(f"record {i}: fields run past its length {length}")
        if ts_delta > max_delta:
            max_delta = ts_delta
        if check_ts:
            ts = base_ts + ts_delta
            if not low <= ts <= high and len(ts_errors) < MAX_RECORD_ERRORS:
                ts_errors.append((i, f"Timestamp {ts} of record {i} is out of range [{low}, {high}]"))
        if compacted:
            b = body[pos]
            key_len = (b >> 1) ^ -(b & 1) if b < 0x80 else _varint(body, pos + 1, b)[0]
            if key_len < 0 and len(key_errors) < MAX_RECORD_ERRORS:
                key_errors.append((i, "Compacted topic cannot accept message without key"))
        pos = rec_end
    if pos != end:
        raise InvalidRecord(f"{end - pos} bytes remain after the {count} records the batch declares")
    if ts_errors:
        raise InvalidTimestamp("One or more records have been rejected due to invalid timestamp", tuple(ts_errors))
    if key_errors:
        raise InvalidRecord("One or more records have been rejected: no key on a compacted topic", tuple(key_errors))
    max_ts = NO_TIMESTAMP if base_ts == NO_TIMESTAMP else base_ts + max_delta
    return Checked(max_ts)


def _varint(body: memoryview, pos: int, first: int) -> tuple[int, int]:
    """The rest of a zig-zag varint whose first byte (already read) had its high bit set."""
    raw = first & 0x7F
    shift = 7
    end = len(body)
    while True:
        if pos >= end:
            raise InvalidRecord("truncated varint in a record")
        b = body[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if b < 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift > 63:
            raise InvalidRecord("varint longer than 10 bytes in a record")


# --- decompression into a bounded scratch buffer ----------------------------------------------------


class _Scratch:
    """One lazily-paged anonymous mapping per thread: only touched pages cost memory, and pages past
    _RELEASE_ABOVE go back to the kernel after each use."""

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, MAX_DECOMPRESSED_BYTES)
        self.view = memoryview(self.map)
        self.high = 0

    def release(self) -> None:
        if self.high > _RELEASE_ABOVE:
            self.map.madvise(mmap.MADV_DONTNEED, _RELEASE_ABOVE, MAX_DECOMPRESSED_BYTES - _RELEASE_ABOVE)
        self.high = 0


_local = threading.local()


def _scratch() -> _Scratch:
    scratch: _Scratch | None = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = _Scratch()
    scratch.high = MAX_DECOMPRESSED_BYTES  # unknown until decompressed: release() checks it
    return scratch


def _decompress_into(codec: int, data: memoryview, out: memoryview) -> int:
    """Decompress ``data`` into ``out``; InvalidRecord if it is malformed or expands past ``len(out)``."""
    try:
        if codec == 1:
            return int(cramjam.gzip.decompress_into(data, out))
        if codec == 2:
            raw = bytes(data[: len(_XERIAL_MAGIC)])
            if raw == _XERIAL_MAGIC:  # xerial framing (the Java client): 16-byte header, then sized chunks
                return _xerial_into(data, out)
            return int(cramjam.snappy.decompress_raw_into(data, out))
        if codec == 3:
            return int(cramjam.lz4.decompress_into(data, out))
        return int(cramjam.zstd.decompress_into(data, out))
    except cramjam.DecompressionError as e:
        raise InvalidRecord(
            f"compressed records do not decompress within {MAX_DECOMPRESSED_BYTES} bytes: {str(e)[:200]}"
        ) from None


def _xerial_into(data: memoryview, out: memoryview) -> int:
    pos = 16
    written = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise InvalidRecord("truncated xerial snappy chunk header")
        size = int.from_bytes(data[pos : pos + 4], "big")
        chunk = data[pos + 4 : pos + 4 + size]
        if len(chunk) != size:
            raise InvalidRecord("truncated xerial snappy chunk")
        written += int(cramjam.snappy.decompress_raw_into(chunk, out[written:]))
        pos += 4 + size
    return written
