"""Walks a request frame by its kio schema before kio reads it, so that no byte sequence can crash the broker.

kio's native reader trusts the lengths it reads: an array count is passed straight to ``Vec::with_capacity``,
so a 20-byte Metadata request claiming 2^32 topics makes it reserve ~34 GB and the process aborts (a Rust
allocation failure is not a Python exception). This module checks every length in the frame against the
bytes that are actually left — array counts (bounded by remaining bytes / the smallest encoding of one
element), string and bytes lengths (compact or legacy), tagged-field counts and sizes, nullable-struct
markers, varints (at most 5 bytes) — and refuses nulls where the schema does not allow them (kio would hand
``None`` to a handler that expects a tuple), and bounds the array elements of one request (MAX_ARRAY_ELEMENTS:
decoding turns each small element into a Python object). Only after a frame passes is it given to kio, which
then allocates in proportion to the frame's real size.

The walk follows exactly the path kio's reader takes (same field order, same nullability rules, tagged
fields read by schema and required to fill their declared size, unknown tags refused as kio refuses them).

Speed: the check is on every request's hot path, so each (API key, version) is compiled once (cached) into
one straight-line Python function — generated source from kio's schema classes (never from input), with
nested loops for arrays and the common cases (1-byte varints, no tagged fields) inlined. It costs a few
microseconds per request (bench/decode.py, docs/benchmarks.md).

Sans-io: bytes in, an exception out; no asyncio.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import Field, dataclass, fields
from functools import cache
from typing import Any

from kio.index import UnknownEntity, load_request_schema
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

# Encoded size of kio's fixed-size kafka types.
_FIXED = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "error_code": 2,
    "int32": 4,
    "uint32": 4,
    "timedelta_i32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "timedelta_i64": 8,
    "datetime_i64": 8,
    "uuid": 16,
}
_VARINT_MAX_BYTES = 5  # every length in a request is an unsigned varint (int32 range), never a varlong

# Array elements in one request, all arrays together. Decoding amplifies small elements: a DeleteGroups
# request of 3-byte group names takes ~26 times its size once kio has built the Python objects, and costs
# 0.3-0.7 us per element to check and decode, on the event loop. Without a bound one 100 MiB request
# (socket.request.max.bytes) could take ~2.6 GB and stall every client for 10-20 s; with it, ~15 MB and
# ~60 ms (measured: 200,000 names, a 0.6 MB frame). 200,000 is four times max.partitions.per.broker's
# default: a request names one element per partition (plus one per topic).
MAX_ARRAY_ELEMENTS = 200_000


class RequestCheckError(ValueError):
    """The frame is not a request kio can safely decode; ``path`` names the field (e.g. topics[0].partitions)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def _uvarint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """An unsigned varint of at most 5 bytes ending before ``end``: (value, position after it), or
    (-1, index into _VARINT_ERRORS) — the caller raises with its field path, which is only formatted then."""
    value = 0
    shift = 0
    start = pos
    while True:
        if pos - start >= _VARINT_MAX_BYTES:
            return -1, 0
        if pos >= end:
            return -1, 1
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


_VARINT_ERRORS = (f"varint longer than {_VARINT_MAX_BYTES} bytes", "frame ends inside a varint")
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_GLOBALS: dict[str, Any] = {
    "_E": RequestCheckError,
    "_uvarint": _uvarint,
    "_VARINT_ERRORS": _VARINT_ERRORS,
    "_i16": _I16,
    "_i32": _I32,
}


@dataclass(frozen=True, slots=True)
class _Path:
    """A field path as f-string source: static names plus the loop variables of the enclosing arrays."""

    text: str = ""

    def field(self, name: str) -> _Path:
        return _Path(f"{self.text}.{name}" if self.text else name)

    def index(self, var: str) -> _Path:
        return _Path(f"{self.text}[{{{var}}}]")

    @property
    def src(self) -> str:
        return f"f{self.text!r}" if "{" in self.text else repr(self.text)


class _Source:
    """Generated lines of one check function; ``var`` hands out unique local names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._n = 0

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def var(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def fail(self, depth: int, path: _Path, problem: str) -> None:
        """Raise with ``problem`` (f-string source without the f and quotes, may use locals)."""
        self.emit(depth, f"raise _E({path.src}, f{problem!r})")

    def uvarint(self, depth: int, var: str, lim: str, path: _Path) -> None:
        """Read an unsigned varint into ``var`` (the caller has checked that a byte is left)."""
        self.emit(depth, f"{var}, pos = _uvarint(buf, pos, {lim})")
        self.emit(depth, f"if {var} < 0:")
        self.emit(depth + 1, f"raise _E({path.src}, _VARINT_ERRORS[pos])")

    def length_uvarint(self, depth: int, lim: str, path: _Path, what: str) -> None:
        """Read an unsigned varint into ``n`` (1-byte case inline)."""
        self.emit(depth, f"if pos >= {lim}:")
        self.fail(depth + 1, path, f"frame ends where {what} was expected")
        self.emit(depth, "n = buf[pos]")
        self.emit(depth, "if n < 0x80:")
        self.emit(depth + 1, "pos += 1")
        self.emit(depth, "else:")
        self.uvarint(depth + 1, "n", lim, path)


def _min_size(kind: str, flexible: bool) -> int:
    """Smallest encoding of a string/bytes/array length field."""
    if flexible:
        return 1
    return 2 if kind == "string" else 4


def _emit_fixed(src: _Source, depth: int, lim: str, path: _Path, size: int, names: list[str]) -> None:
    src.emit(depth, f"pos += {size}")
    src.emit(depth, f"if pos > {lim}:")
    src.fail(depth + 1, path, f"frame ends inside {', '.join(names)}: {size} bytes, {{{lim} - pos + {size}}} left")


def _emit_string(src: _Source, depth: int, lim: str, path: _Path, kind: str, flexible: bool, nullable: bool) -> None:
    """A string or bytes value (``kind``): compact (uvarint length + 1, 0 = null) or legacy (int16 / int32)."""
    if flexible:
        src.length_uvarint(depth, lim, path, f"the length of a {kind}")
        src.emit(depth, "if n == 0:")
        if nullable:
            src.emit(depth + 1, "pass")
        else:
            src.fail(depth + 1, path, f"null {kind} where the schema requires one")
        src.emit(depth, "else:")
        src.emit(depth + 1, "n -= 1")
        body = depth + 1
    else:
        width, unpack = (2, "_i16") if kind == "string" else (4, "_i32")
        src.emit(depth, f"if pos + {width} > {lim}:")
        src.fail(depth + 1, path, f"frame ends inside the length of a {kind}")
        src.emit(depth, f"n = {unpack}(buf, pos)[0]")
        src.emit(depth, f"pos += {width}")
        src.emit(depth, "if n < 0:")
        if nullable:
            src.emit(depth + 1, "if n != -1:")
            src.fail(depth + 2, path, f"{kind} length {{n}}")
        else:
            src.fail(depth + 1, path, f"{kind} length {{n}} where the schema requires a {kind} (-1 is null)")
        src.emit(depth, "else:")
        body = depth + 1
    src.emit(body, f"if n > {lim} - pos:")
    src.fail(body + 1, path, f"{kind} of {{n}} bytes, {{{lim} - pos}} bytes left")
    src.emit(body, "pos += n")


def _emit_array(
    src: _Source,
    depth: int,
    lim: str,
    path: _Path,
    flexible: bool,
    nullable: bool,
    element_min: int,
    element: Callable[[int, _Path], None] | None,
) -> None:
    """An array; ``element`` emits one element's check, None for fixed-size elements of ``element_min`` bytes."""
    if flexible:
        src.length_uvarint(depth, lim, path, "an array length")
        src.emit(depth, "if n == 0:")
        if nullable:
            src.emit(depth + 1, "pass")
        else:
            src.fail(depth + 1, path, "null array where the schema requires one")
        src.emit(depth, "else:")
        src.emit(depth + 1, "n -= 1")
    else:
        src.emit(depth, f"if pos + 4 > {lim}:")
        src.fail(depth + 1, path, "frame ends inside an array length")
        src.emit(depth, "n = _i32(buf, pos)[0]")
        src.emit(depth, "pos += 4")
        src.emit(depth, "if n < 0:")
        if nullable:
            src.emit(depth + 1, "if n != -1:")
            src.fail(depth + 2, path, "array length {n}")
        else:
            src.fail(depth + 1, path, "array length {n} where the schema requires an array (-1 is null)")
        src.emit(depth, "else:")
    body = depth + 1
    per = max(1, element_min)
    src.emit(body, f"if n > ({lim} - pos) // {per}:")
    src.fail(body + 1, path, f"array of {{n}} elements, {{{lim} - pos}} bytes left")
    src.emit(body, "budget -= n")
    src.emit(body, "if budget < 0:")
    src.fail(body + 1, path, "more than {max_elements} array elements in one request")
    if element is None:
        src.emit(body, f"pos += n * {element_min}")
        return
    i = src.var("i")
    src.emit(body, f"for {i} in range(n):")
    element(body + 1, path.index(i))


def _field_min(field: Field[Any], flexible: bool, is_request_header: bool) -> int:
    if is_request_header and field.name == "client_id":
        return 2
    kind = classify_field(field)
    if isinstance(kind, PrimitiveField):
        kafka_type = get_schema_field_type(field)
        return _FIXED.get(kafka_type) or _min_size("string" if kafka_type == "string" else "bytes", flexible)
    if isinstance(kind, EntityField):
        return _entity_min(kind.type_, is_optional(field))
    return 1 if flexible else 4  # an array


@cache
def _entity_min(cls: type[Any], nullable: bool) -> int:
    """Smallest encoding of one entity: what bounds an array count by the bytes left."""
    if nullable:
        return 1
    flexible = bool(cls.__flexible__)
    header = cls.__name__ == "RequestHeader"
    total = sum(_field_min(f, flexible, header) for f in fields(cls) if get_field_tag(f) is None)
    return total + (1 if flexible else 0)


def _emit_field(
    src: _Source, depth: int, lim: str, path: _Path, field: Field[Any], flexible: bool, header: bool
) -> None:
    """One non-fixed field (or a tagged field), by the rules kio's reader applies."""
    tagged = get_field_tag(field) is not None
    if header and field.name == "client_id":  # always a legacy nullable string (Kafka's exception)
        _emit_string(src, depth, lim, path, "string", False, True)
        return
    kind = classify_field(field)
    if isinstance(kind, PrimitiveField):
        kafka_type = get_schema_field_type(field)
        fixed = _FIXED.get(kafka_type)
        if fixed is not None:
            _emit_fixed(src, depth, lim, path, fixed, [field.name])
        else:
            text = "string" if kafka_type == "string" else "bytes"
            _emit_string(src, depth, lim, path, text, flexible, is_optional(field) and not tagged)
        return
    if isinstance(kind, PrimitiveTupleField):
        kafka_type = get_schema_field_type(field)
        fixed = _FIXED.get(kafka_type)
        text = "string" if kafka_type == "string" else "bytes"

        def primitive(d: int, p: _Path) -> None:  # elements of primitive arrays are never nullable
            _emit_string(src, d, lim, p, text, flexible, False)

        if fixed is not None:
            _emit_array(src, depth, lim, path, flexible, is_optional(field), fixed, None)
        else:
            _emit_array(src, depth, lim, path, flexible, is_optional(field), _min_size(text, flexible), primitive)
        return
    if isinstance(kind, EntityField):
        _emit_entity(src, depth, lim, path, kind.type_, is_optional(field))
        return
    if isinstance(kind, EntityTupleField):
        cls = kind.type_

        def entity(d: int, p: _Path) -> None:
            _emit_entity(src, d, lim, p, cls, False)

        _emit_array(src, depth, lim, path, flexible, is_optional(field), _entity_min(cls, False), entity)
        return
    raise TypeError(f"unsupported schema field {field.name}")


def _emit_entity(src: _Source, depth: int, lim: str, path: _Path, cls: type[Any], nullable: bool) -> None:
    if nullable:  # KIP-893 nullable struct: an int8 marker, -1 null, 1 present
        src.emit(depth, f"if pos >= {lim}:")
        src.fail(depth + 1, path, "frame ends where a nullable struct marker was expected")
        src.emit(depth, "n = buf[pos]")
        src.emit(depth, "pos += 1")
        src.emit(depth, "if n != 0xFF:")
        depth += 1
        src.emit(depth, "if n != 1:")
        src.fail(depth + 1, path, "nullable struct marker {n} (expected -1 or 1)")
    flexible = bool(cls.__flexible__)
    header = cls.__name__ == "RequestHeader"
    tagged: list[Field[Any]] = []
    run: list[str] = []  # consecutive fixed-size fields, checked as one step
    run_size = 0
    for field in fields(cls):
        if get_field_tag(field) is not None:
            tagged.append(field)
            continue
        kind = classify_field(field)
        fixed = _FIXED.get(get_schema_field_type(field)) if isinstance(kind, PrimitiveField) else None
        if fixed is not None and not (header and field.name == "client_id"):
            run.append(field.name)
            run_size += fixed
            continue
        if run:
            _emit_fixed(src, depth, lim, path.field(run[0]), run_size, run)
            run, run_size = [], 0
        _emit_field(src, depth, lim, path.field(field.name), field, flexible, header)
    if run:
        _emit_fixed(src, depth, lim, path.field(run[0]), run_size, run)
    src.emit(depth, "pass")
    if flexible:
        _emit_tagged(src, depth, lim, path, tagged, header)


def _emit_tagged(src: _Source, depth: int, lim: str, path: _Path, tagged: list[Field[Any]], header: bool) -> None:
    """The tagged-field section: a count, then (tag, size, value) each; none is the inline common case."""
    where = path.field("<tagged fields>")
    src.emit(depth, f"if pos >= {lim}:")
    src.fail(depth + 1, where, "frame ends where the tagged-field count was expected")
    src.emit(depth, "if buf[pos] == 0:")
    src.emit(depth + 1, "pos += 1")
    src.emit(depth, "else:")
    d = depth + 1
    count, tag, size, stop = src.var("count"), src.var("tag"), src.var("size"), src.var("stop")
    src.uvarint(d, count, lim, where)
    src.emit(d, f"if {count} > ({lim} - pos) // 2:")  # each takes at least a tag byte and a size byte
    src.fail(d + 1, where, f"{{{count}}} tagged fields, {{{lim} - pos}} bytes left")
    src.emit(d, f"for _ in range({count}):")
    d += 1
    src.uvarint(d, tag, lim, where)
    src.uvarint(d, size, lim, where)
    src.emit(d, f"if {size} > {lim} - pos:")
    src.fail(d + 1, where, f"tagged field {{{tag}}} of {{{size}}} bytes, {{{lim} - pos}} bytes left")
    src.emit(d, f"{stop} = pos + {size}")
    keyword = "if"
    for field in tagged:
        src.emit(d, f"{keyword} {tag} == {int(get_field_tag(field) or 0)}:")
        keyword = "elif"
        field_path = path.field(field.name)
        _emit_field(src, d + 1, stop, field_path, field, True, header)
        src.emit(d + 1, f"if pos != {stop}:")
        src.fail(d + 2, field_path, f"tagged field declares {{{size}}} bytes but holds {{pos - {stop} + {size}}}")
    if tagged:
        src.emit(d, "else:")
        src.fail(d + 1, where, f"unknown tagged field {{{tag}}}")  # kio refuses unknown tags (KeyError)
    else:
        src.fail(d, where, f"unknown tagged field {{{tag}}}")


Check = Callable[[bytes, int, int], int]


def _compile(api_key: int, version: int, cls: Any) -> tuple[Check, str]:
    src = _Source()
    src.emit(0, "def check(buf, lim, max_elements):")
    src.emit(1, "pos = 0")
    src.emit(1, "budget = max_elements")
    _emit_entity(src, 1, "lim", _Path("header"), cls.__header_schema__, False)
    _emit_entity(src, 1, "lim", _Path(), cls, False)
    src.emit(1, "return pos")
    text = "\n".join(src.lines)
    namespace = dict(_GLOBALS)
    # The source is generated from kio's schema classes only, never from request bytes.
    exec(compile(text, f"<request check API {api_key} v{version}>", "exec"), namespace)  # noqa: S102
    fn: Check = namespace["check"]
    return fn, text


@cache
def request_plan(api_key: int, version: int) -> Check:
    """The compiled check of one API version, built once. Raises RequestCheckError if kio has no schema."""
    try:
        cls: Any = load_request_schema(api_key, version)
    except UnknownEntity:
        raise RequestCheckError("", f"no request schema for API {api_key} v{version}") from None
    return _compile(api_key, version, cls)[0]


def plan_source(api_key: int, version: int) -> str:
    """The generated source of one API version's check (for reading and debugging)."""
    return _compile(api_key, version, load_request_schema(api_key, version))[1]


def check_request(frame: bytes, api_key: int, version: int, max_elements: int = MAX_ARRAY_ELEMENTS) -> None:
    """Raise RequestCheckError unless ``frame`` (header + body, no size prefix) is safe to give to kio:
    every length fits the frame, and all its arrays together hold at most ``max_elements`` elements.

    Bytes after the end of the request are allowed, as Kafka and kio allow them (kio never reads them):
    librdkafka sends three after a Metadata v12 request for all topics."""
    request_plan(api_key, version)(frame, len(frame), max_elements)
