"""A seeded mutation fuzzer of Kafka request frames: valid requests of every advertised API version, mutated.

Why its own encoder: a mutation that puts a huge length *at a length position* needs to know where the
lengths are, so requests are laid out here from kio's schemas (the field types and their order), and every
length written (legacy int16/int32, compact uvarint, tagged-field counts and sizes) is recorded with its
offset. ``check_valid`` decodes a sample with kio's own reader, which keeps this encoder honest.

Deterministic: ``fuzz_frame(seed, index)`` depends on nothing but its arguments (its RNG is seeded with
both), so a frame seen in a failure report is rebuilt with ``python -m tests.fuzz_frames SEED INDEX``.
Bounded: a frame is at most a few tens of KB.
"""

from __future__ import annotations

import random
import struct
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from kio.index import KioIndexError, load_request_schema
from kio.serial import entity_reader
from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    get_schema_field_type,
    is_optional,
)

from brokers.handlers.registry import HANDLERS
from tests.e2e.kafka_wire import uvarint
from tests.request_samples import sample_requests
from tests.segment_data import make_batch

# Topic and group names come from a small vocabulary, so that the fuzzer's valid CreateTopics do not make
# a new topic per frame and its DeleteTopics/DeleteRecords never reach the topic a real client checks with.
TOPICS = ("fuzz-a", "fuzz-b", "fuzz-c", "", "fuzz-a" * 50, "bad/name", "__consumer_offsets", ".")
GROUPS = ("fuzz-g", "fuzz-h", "", "g" * 300)
NAME_FIELDS = frozenset({"name", "topic", "topic_name", "topics"})
GROUP_FIELDS = frozenset({"group_id", "group", "groups", "group_ids", "key", "coordinator_keys"})
MAX_ARRAY = 3

_INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "error_code": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "timedelta_i32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    # kio decodes these to datetime/timedelta, which cannot hold every int64 (it closes the connection)
    "timedelta_i64": (-(10**12), 10**12),
    "datetime_i64": (-1, 250_000_000_000_000),
    "uint8": (0, (1 << 8) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
}
_INT_FORMATS = {
    "int8": ">b",
    "int16": ">h",
    "error_code": ">h",
    "int32": ">i",
    "timedelta_i32": ">i",
    "int64": ">q",
    "timedelta_i64": ">q",
    "datetime_i64": ">q",
    "uint8": ">B",
    "uint16": ">H",
    "uint32": ">I",
    "uint64": ">Q",
}


@dataclass(frozen=True, slots=True)
class LengthPos:
    """Where a length was written: byte offset in the request (header included) and its encoding."""

    offset: int
    kind: str  # "i16" (legacy string), "i32" (legacy array/bytes), "uvarint" (compact, tagged counts/sizes)
    width: int  # bytes it occupies


@dataclass(frozen=True, slots=True)
class Sample:
    """One valid request: header + body bytes (no size prefix) and the positions of its lengths."""

    api_key: int
    version: int
    data: bytes
    lengths: tuple[LengthPos, ...]


@dataclass(frozen=True, slots=True)
class FuzzFrame:
    """One frame to send, size prefix included. ``last`` frames leave the stream unsynchronised (a size
    prefix that lies), so the sender closes its connection after one."""

    seed: int
    index: int
    api_key: int
    version: int
    mutations: tuple[str, ...]
    wire: bytes
    last: bool

    def describe(self) -> str:
        return (
            f"seed={self.seed} index={self.index} api={self.api_key} v{self.version} "
            f"mutations={','.join(self.mutations) or 'none'} bytes={len(self.wire)} hex={self.wire.hex()}"
        )


def advertised_versions() -> list[tuple[int, int]]:
    """Every (api key, version) the broker advertises in ApiVersions."""
    return [
        (spec.api_key, v)
        for spec in sorted(HANDLERS.values(), key=lambda s: s.api_key)
        for v in range(spec.advertised_min_version, spec.max_version + 1)
    ]


@cache
def encodable_versions() -> tuple[tuple[int, int], ...]:
    """The advertised versions kio has a schema for (Produce v0-v2 are advertised for librdkafka's sake
    only, see brokers/handlers/registry.py; frames of those versions come from the ``api`` mutation)."""
    out = []
    for key, version in advertised_versions():
        try:
            load_request_schema(key, version)
        except KioIndexError:
            continue
        out.append((key, version))
    return tuple(out)


class _Out:
    """A byte buffer that remembers where lengths went."""

    def __init__(self, base: int = 0) -> None:
        self.buf = bytearray()
        self.lengths: list[LengthPos] = []
        self.base = base

    def length(self, kind: str, value: int) -> None:
        raw = struct.pack(">h" if kind == "i16" else ">i", value) if kind != "uvarint" else uvarint(value)
        self.lengths.append(LengthPos(self.base + len(self.buf), kind, len(raw)))
        self.buf += raw

    def merge(self, other: _Out) -> None:
        self.lengths += [LengthPos(p.offset + len(self.buf), p.kind, p.width) for p in other.lengths]
        self.buf += other.buf


class _Gen:
    """Random field values, biased toward small and boundary values so handlers see plausible requests."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, kafka_type: str) -> int:
        lo, hi = _INT_RANGES[kafka_type]
        r = self.rng.random()
        if r < 0.55:
            v = self.rng.randint(0, 3)
        elif r < 0.7:
            v = self.rng.choice((-1, -2, 0, 1, 100, 1000, 60_000))
        elif r < 0.85:
            v = self.rng.choice((lo, hi, lo + 1, hi - 1))
        else:
            v = self.rng.randint(lo, hi)
        return max(lo, min(hi, v))

    def text(self, field_name: str) -> str:
        if field_name in NAME_FIELDS:
            return self.rng.choice(TOPICS)
        if field_name in GROUP_FIELDS or field_name.endswith("group_id"):
            return self.rng.choice(GROUPS)
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(("", "fuzz", "range", "uncompressed", "cleanup.policy", "retention.ms"))
        if r < 0.9:
            return "".join(self.rng.choice("abcxyz-._0123") for _ in range(self.rng.randint(1, 20)))
        return self.rng.choice(("\u00e9\u4e2d", "x" * 2000, "\x00"))

    def blob(self, kafka_type: str) -> bytes:
        r = self.rng.random()
        if kafka_type == "records" and r < 0.6:
            n = self.rng.randint(1, 4)
            return make_batch(0, n, 1_700_000_000_000, value_size=self.rng.randint(0, 64), rng=self.rng)
        if r < 0.8:
            return self.rng.randbytes(self.rng.randint(0, 40))
        return b""


def _write_string(out: _Out, value: bytes | None, flexible: bool, legacy_kind: str) -> None:
    if flexible:
        out.length("uvarint", 0 if value is None else len(value) + 1)
    else:
        out.length(legacy_kind, -1 if value is None else len(value))
    if value is not None:
        out.buf += value


def _primitive(out: _Out, gen: _Gen, field_name: str, kafka_type: str, flexible: bool, optional: bool) -> None:
    if kafka_type in _INT_FORMATS:
        out.buf += struct.pack(_INT_FORMATS[kafka_type], gen.integer(kafka_type))
    elif kafka_type == "bool":
        out.buf.append(gen.rng.getrandbits(1))
    elif kafka_type == "float64":
        out.buf += struct.pack(">d", gen.rng.choice((0.0, 1.5, -1.0, 1e308)))
    elif kafka_type == "uuid":
        u = gen.rng.choice((uuid.UUID(int=0), uuid.UUID(int=gen.rng.getrandbits(128)), uuid.UUID(int=1)))
        out.buf += u.bytes
    elif kafka_type == "string":
        s = None if optional and gen.rng.random() < 0.2 else gen.text(field_name).encode()
        _write_string(out, s, flexible, "i16")
    elif kafka_type in ("bytes", "records"):
        b = None if optional and gen.rng.random() < 0.2 else gen.blob(kafka_type)
        _write_string(out, b, flexible, "i32")
    else:
        raise NotImplementedError(f"kafka type {kafka_type!r}")


FieldWriter = Callable[[_Out, _Gen], None]


@cache
def _field_writer(f: Any, flexible: bool, is_header: bool, is_tag: bool) -> FieldWriter:
    """A writer of one field of a kio dataclass (mirrors kio.serial._serialize.get_field_writer)."""
    name: str = f.name
    if is_header and name == "client_id":  # always a legacy nullable string (RequestHeader.json)
        return lambda out, gen: _write_string(out, gen.rng.choice((b"fuzz", b"", None)), False, "i16")
    optional = False if is_tag else is_optional(f)
    cls = classify_field(f)
    inner: FieldWriter
    if isinstance(cls, PrimitiveField | PrimitiveTupleField):
        kafka_type = get_schema_field_type(f)
        inner_optional = optional and isinstance(cls, PrimitiveField)

        def inner(out: _Out, gen: _Gen) -> None:
            _primitive(out, gen, name, kafka_type, flexible, inner_optional)

    elif isinstance(cls, EntityField):
        write_entity = _entity_writer(cls.type_, False)

        def inner(out: _Out, gen: _Gen) -> None:
            if optional:
                if gen.rng.random() < 0.2:
                    out.buf += b"\xff"
                    return
                out.buf += b"\x01"
            write_entity(out, gen)

    else:
        assert isinstance(cls, EntityTupleField)
        inner = _entity_writer(cls.type_, False)
    if not cls.is_array:
        return inner
    array_optional = optional

    def write_array(out: _Out, gen: _Gen) -> None:
        if array_optional and gen.rng.random() < 0.15:
            out.length("uvarint" if flexible else "i32", 0 if flexible else -1)
            return
        n = gen.rng.randint(0, MAX_ARRAY)
        out.length("uvarint" if flexible else "i32", n + 1 if flexible else n)
        for _ in range(n):
            inner(out, gen)

    return write_array


@cache
def _entity_writer(entity_type: type[Any], is_header: bool) -> FieldWriter:
    flexible = bool(entity_type.__flexible__)
    plain: list[FieldWriter] = []
    tagged: list[tuple[int, FieldWriter]] = []
    for f in fields(entity_type):
        tag = get_field_tag(f)
        w = _field_writer(f, flexible, is_header, tag is not None)
        if tag is None:
            plain.append(w)
        else:
            tagged.append((int(tag), w))
    tagged.sort()

    def write(out: _Out, gen: _Gen) -> None:
        for w in plain:
            w(out, gen)
        if not flexible:
            return
        chosen = [(t, w) for t, w in tagged if gen.rng.random() < 0.3]
        out.length("uvarint", len(chosen))
        for t, w in chosen:
            out.buf += uvarint(t)
            value = _Out()
            w(value, gen)
            out.length("uvarint", len(value.buf))
            out.merge(value)

    return write


def make_sample(api_key: int, version: int, rng: random.Random, correlation_id: int = 1) -> Sample:
    """A valid request of one API version with random field values."""
    request_cls = load_request_schema(api_key, version)
    out = _Out()
    out.buf += struct.pack(">hhi", api_key, version, correlation_id)
    header_type = request_cls.__header_schema__
    gen = _Gen(rng)
    # The header's first three fields are the fixed ones above; client_id (and tagged fields) follow.
    client_id = next(f for f in fields(header_type) if f.name == "client_id")
    _field_writer(client_id, False, True, False)(out, gen)
    if header_type.__flexible__:
        out.length("uvarint", 0)
    _entity_writer(request_cls, False)(out, gen)
    return Sample(api_key, version, bytes(out.buf), tuple(out.lengths))


def check_valid(sample: Sample) -> None:
    """Decode a sample with kio's reader (header and body, to the last byte); raises if it is not valid."""
    request_cls = load_request_schema(sample.api_key, sample.version)
    _, used = entity_reader(request_cls.__header_schema__)(sample.data, 0)
    _, size = entity_reader(request_cls)(sample.data, used)
    if used + size != len(sample.data):
        raise ValueError(f"API {sample.api_key} v{sample.version}: {len(sample.data) - used - size} bytes left over")


# --------------------------------------------------------------------------- mutations

HUGE_I16 = (0x7FFF, -1, -2, -0x8000)
HUGE_I32 = (0x7FFFFFFF, -1, -2, 0x10000000, -0x80000000)
HUGE_UVARINT = (
    b"\xff\xff\xff\xff\x0f",  # 2^32 - 1
    b"\xff\xff\xff\xff\x07",  # 2^31 - 1
    b"\x80\x80\x80\x80\x08",  # 2^31
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # 2^64 - 1
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # longer than any varint
    b"\x00",  # compact null (-1) where it may not be nullable
    b"\xfe\xff\xff\x7f",
)
UNKNOWN_KEYS = (-1, 4, 5, 6, 7, 17, 21, 67, 1000, 0x7FFF)


def huge_length(data: bytes, pos: LengthPos, rng: random.Random) -> bytes:
    """``data`` with the length at ``pos`` replaced by a huge, negative or off-by-some value."""
    end = pos.offset + pos.width
    if pos.kind == "i16":
        raw = struct.pack(">h", rng.choice(HUGE_I16))
    elif pos.kind == "i32":
        raw = struct.pack(">i", rng.choice(HUGE_I32))
    else:
        raw = rng.choice(HUGE_UVARINT)
    return data[: pos.offset] + raw + data[end:]


def _bitflip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _byteset(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)))
    return bytes(b)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _extend(data: bytes, rng: random.Random) -> bytes:
    return data + rng.randbytes(rng.choice((1, 2, 4, rng.randint(1, 300))))


def _api(data: bytes, rng: random.Random) -> bytes:
    keys = [k for k, _ in advertised_versions()]
    key = rng.choice(keys) if rng.random() < 0.7 else rng.choice(UNKNOWN_KEYS)
    version = rng.choice((-1, 0, 1, rng.randint(0, 20), 0x7FFF))
    return struct.pack(">hh", key, version) + data[4:]


def _version_only(data: bytes, rng: random.Random) -> bytes:
    """Same body, another version of the same API: the body's shape no longer matches its version."""
    if len(data) < 4:
        return data
    key = struct.unpack_from(">h", data, 0)[0]
    versions = [v for k, v in advertised_versions() if k == key] or [0]
    return data[:2] + struct.pack(">h", rng.choice(versions)) + data[4:]


@cache
def kio_samples() -> tuple[tuple[int, int, bytes], ...]:
    return tuple(sample_requests())


def fuzz_frame(seed: int, index: int) -> FuzzFrame:
    """The ``index``-th frame of the run with ``seed`` (size prefix included)."""
    rng = random.Random(f"tidelog-fuzz:{seed}:{index}")
    pairs = encodable_versions()
    api_key, version = rng.choice(pairs)
    correlation_id = index & 0x7FFFFFFF
    sample = make_sample(api_key, version, rng, correlation_id)
    if rng.random() < 0.15:  # a kio-written sample (tests/request_samples.py) as the base, for variety
        api_key, version, written = rng.choice(kio_samples())
        sample = Sample(api_key, version, written[:4] + struct.pack(">i", correlation_id) + written[8:], ())
    data = sample.data
    r = rng.random()
    mutations: list[str] = []
    if r < 0.03:  # zero-length frame
        return FuzzFrame(seed, index, api_key, version, ("zero-length",), b"\x00\x00\x00\x00", False)
    if r < 0.06:  # random bytes
        junk = rng.randbytes(rng.randint(0, 200))
        return FuzzFrame(seed, index, api_key, version, ("random",), struct.pack(">i", len(junk)) + junk, False)
    if r < 0.09:  # a size prefix that lies (too long: the broker waits; too short: the stream desynchronises)
        size = rng.choice((len(data) + rng.randint(1, 100), max(0, len(data) - rng.randint(1, 10)), 0x7FFFFFFF, -1))
        return FuzzFrame(seed, index, api_key, version, ("lying-size",), struct.pack(">i", size) + data, True)
    if r < 0.3:
        pass  # valid: its field values (extremes included) reach the handlers
    else:
        ops: list[tuple[str, Callable[[bytes, random.Random], bytes]]] = [
            ("bitflip", _bitflip),
            ("byteset", _byteset),
            ("truncate", _truncate),
            ("extend", _extend),
            ("api", _api),
            ("version", _version_only),
        ]
        for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
            k = rng.random()
            if k < 0.4 and sample.lengths and data is sample.data:
                pos = rng.choice([p for p in sample.lengths if p.offset > 8] or sample.lengths)
                data = huge_length(data, pos, rng)
                mutations.append(f"huge@{pos.offset}:{pos.kind}")
            elif k < 0.5:
                other = make_sample(*rng.choice(pairs), rng, correlation_id)
                cut_a, cut_b = rng.randrange(len(data) + 1), rng.randrange(len(other.data) + 1)
                data = data[:cut_a] + other.data[cut_b:]
                mutations.append(f"splice({other.api_key}v{other.version})")
            else:
                name, op = rng.choice(ops)
                if data:
                    data = op(data, rng)
                    mutations.append(name)
    return FuzzFrame(seed, index, api_key, version, tuple(mutations), struct.pack(">i", len(data)) + data, False)


def every_huge_length_frame(api_key: int, version: int, seed: int = 0) -> list[tuple[LengthPos, bytes]]:
    """One valid request of a version (arrays non-empty where it can be arranged), then each of its length
    positions set to 0x7fffffff / ff ff ff ff 0f: the request bodies (no size prefix) to send."""
    rng = random.Random(f"tidelog-huge:{seed}:{api_key}:{version}")
    sample = max((make_sample(api_key, version, rng) for _ in range(8)), key=lambda s: len(s.lengths))
    out = []
    for pos in sample.lengths:
        end = pos.offset + pos.width
        raw = {"i16": struct.pack(">h", 0x7FFF), "i32": struct.pack(">i", 0x7FFFFFFF)}.get(
            pos.kind, b"\xff\xff\xff\xff\x0f"
        )
        out.append((pos, sample.data[: pos.offset] + raw + sample.data[end:]))
    return out


def main(argv: list[str]) -> None:
    """``python -m tests.fuzz_frames SEED INDEX [INDEX...]``: print frames of a run, to reproduce one."""
    seed = int(argv[0])
    for index in argv[1:]:
        print(fuzz_frame(seed, int(index)).describe())


if __name__ == "__main__":
    main(sys.argv[1:])
