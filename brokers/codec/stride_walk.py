"""The record walk of brokers/codec/validate.py for runs of equally long records, checked with slices — sans-io.

A producer sending fixed-size values (a load test, fixed-layout telemetry) writes records whose encoded length,
timestamp-delta width and offset-delta width only change where the offset delta gains a byte (record 64 and
8192). Within such a run the records sit at a fixed stride, so each field the full walk reads is one byte column
(``body[start:stop:stride]``) that C code compares or translates at once, instead of a Python loop iteration per
record (~0.5 µs each, the biggest CPU cost of the produce path; figures in docs/benchmarks.md).

``max_timestamp_delta`` answers only when every record fits that shape; otherwise it returns None and the caller
runs the full walk, which also finds and words any error. It never accepts a batch the full walk refuses: it
checks each record's length (as the full walk does), that the lengths fill the body exactly, the count, that
offset deltas run 0..n-1, and that every field the full walk reads lies inside its record.
"""

from __future__ import annotations

import sys

_ZIGZAG_RANK = bytes(((b >> 1) ^ -(b & 1)) + 64 for b in range(128)) + b"\xff" * 128
"""One-byte zig-zag varint -> its value + 64 (order-preserving, 0..127); 0xFF for a byte with the high bit set
(a longer varint: not this shape)."""
_HIGH = bytes(range(128, 256))
_LOW = bytes(range(128))
_LITTLE = sys.byteorder == "little"
_OFFSET_1 = bytes(range(0, 128, 2))  # offset deltas 0..63: one byte, zig-zag 2i
_OFFSET_2_LOW = bytes(((2 * i) & 0x7F) | 0x80 for i in range(64, 8192))  # 64..8191: two bytes
_OFFSET_2_HIGH = bytes((2 * i) >> 7 for i in range(64, 8192))
_EVEN = bytes(range(0, 256, 2))
_MIN_RUN = 4  # shorter runs: the per-run slicing costs more than the loop it replaces
_SHORT_RUN = 32
_MAX_SHORT_RUNS = 8  # after this many runs averaging under _SHORT_RUN records, the full walk takes over


def _common_prefix(column: memoryview, expected: bytes) -> int:
    """How many leading bytes of ``column`` equal ``expected`` (binary search over C comparisons)."""
    if column == expected:
        return len(expected)
    low, high = 0, len(expected) - 1  # column[:low] matches; column[:high + 1] does not
    while low < high:
        mid = (low + high + 1) // 2
        if column[:mid] == expected[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def max_timestamp_delta(body: memoryview, count: int) -> int | None:
    """The largest timestamp delta of the ``count`` records in ``body``, or None to run the full walk."""
    end = len(body)
    pos = 0
    i = 0
    best = -(2**63)
    runs = 0
    while i < count:
        if runs >= _MAX_SHORT_RUNS and i < _SHORT_RUN * runs:
            return None  # many short runs: slicing per run would cost more than the full walk
        runs += 1
        if pos >= end:
            return None
        b = body[pos]
        if b < 0x80:
            width = 1
            raw = b
        elif pos + 1 < end and body[pos + 1] < 0x80:
            width = 2
            raw = (b & 0x7F) | (body[pos + 1] << 7)
        else:
            return None
        length = (raw >> 1) ^ -(raw & 1)
        if pos + width + 2 >= end:
            return None
        ts_width = 1 if body[pos + width + 1] < 0x80 else 2
        if i < 64:
            offset_width, limit = 1, 64
        elif i < 8192:
            offset_width, limit = 2, 8192
        else:
            return None
        # attributes, timestamp delta, offset delta, then key length, value length and header count
        if length < 1 + ts_width + offset_width + 3:
            return None
        stride = width + length
        n = min(count - i, limit - i, (end - pos) // stride)
        if n < 1:
            return None
        for k in range(width):  # the run: as many records as have this one's length bytes
            n = _common_prefix(body[pos + k : pos + n * stride : stride], bytes((body[pos + k],)) * n)
        if n < _MIN_RUN and n < count - i:
            return None
        stop = pos + n * stride
        at = pos + width + 1
        if ts_width == 1:
            top = max(bytes(body[at:stop:stride]).translate(_ZIGZAG_RANK))
            if top == 0xFF:
                return None
            best = max(best, top - 64)
        else:
            low_col = bytes(body[at:stop:stride])
            high_col = bytes(body[at + 1 : stop : stride])
            if low_col.translate(None, _HIGH) or high_col.translate(None, _LOW) or low_col.translate(None, _EVEN):
                return None  # not all two-byte varints, or a negative delta: the full walk
            if not _LITTLE:
                return None
            pairs = bytearray(2 * n)  # native (little-endian) u16 = low + 256 * high: ordered as the raw values
            pairs[0::2] = low_col
            pairs[1::2] = high_col
            top = max(memoryview(pairs).cast("H"))
            best = max(best, ((top & 0x7F) | ((top >> 8) << 7)) >> 1)
        at += ts_width
        if offset_width == 1:
            if body[at:stop:stride] != _OFFSET_1[i : i + n]:
                return None
        elif (
            body[at:stop:stride] != _OFFSET_2_LOW[i - 64 : i - 64 + n]
            or body[at + 1 : stop : stride] != _OFFSET_2_HIGH[i - 64 : i - 64 + n]
        ):
            return None
        pos = stop
        i += n
    if pos != end or count < 1:
        return None
    return best
