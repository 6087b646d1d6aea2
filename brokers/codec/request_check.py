"""Walks a request frame by its kio schema before kio reads it, so that no byte sequence can crash the broker.

kio's native reader trusts the lengths it reads: an array count is passed straight to ``Vec::with_capacity``,
so a 20-byte Metadata request claiming 2^32 topics makes it reserve ~34 GB and the process aborts (a Rust
allocation failure is not a Python exception). This module checks every length in the frame against the
bytes that are actually left — array counts (bounded by remaining bytes / the smallest encoding of one
element), string and bytes lengths (compact or legacy), tagged-field counts and sizes, nullable-struct
markers — and refuses nulls where the schema does not allow them (kio would hand ``None`` to a handler that
expects a tuple). Only after a frame passes is it given to kio, which then allocates in proportion to the
frame's real size.

The walk follows exactly the path kio's reader takes (same field order, same nullability rules, tagged
fields read by schema and required to fill their declared size, unknown tags refused as kio refuses them), and
the frame must end where the request ends. A plan of small closures is compiled once per (API key, version)
and cached: the check runs on every request.

Sans-io: bytes in, an exception out; no asyncio.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import Field, fields
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

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")

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

# A step checks one field starting at ``pos`` within ``buf[:end]`` and returns where the field ends.
Step = Callable[[bytes, int, int], int]


class RequestCheckError(ValueError):
    """The frame is not a request kio can safely decode; the message names the field path."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self._parts: list[str] = []  # innermost first

    def within(self, part: str) -> RequestCheckError:
        """Record that the error sits inside field (or element ``[i]``) ``part``; returns self for ``raise``."""
        self._parts.append(part)
        return self

    @property
    def path(self) -> str:
        out = ""
        for part in reversed(self._parts):
            out += part if (part.startswith("[") or not out) else "." + part
        return out

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self._parts else self.problem


def _uvarint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """An unsigned varint of at most 5 bytes ending before ``end``: (value, position after it)."""
    if pos >= end:
        raise RequestCheckError("frame ends where a varint was expected")
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    p = pos + 1
    while True:
        if p - pos >= _VARINT_MAX_BYTES:
            raise RequestCheckError(f"varint longer than {_VARINT_MAX_BYTES} bytes")
        if p >= end:
            raise RequestCheckError("frame ends inside a varint")
        b = buf[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, p
        shift += 7


def _fixed_step(size: int, names: tuple[str, ...]) -> Step:
    what = ", ".join(names)

    def step(buf: bytes, pos: int, end: int) -> int:
        p = pos + size
        if p > end:
            raise RequestCheckError(f"frame ends inside fixed-size field(s) {what}: {size} bytes, {end - pos} left")
        return p

    return step


def _compact_bytes_step(nullable: bool, kind: str) -> Step:
    def step(buf: bytes, pos: int, end: int) -> int:
        n, p = _uvarint(buf, pos, end)
        if n == 0:
            if nullable:
                return p
            raise RequestCheckError(f"null {kind} where the schema requires one")
        n -= 1
        if n > end - p:
            raise RequestCheckError(f"{kind} of {n} bytes, {end - p} bytes left")
        return p + n

    return step


def _legacy_bytes_step(nullable: bool, kind: str, length: struct.Struct) -> Step:
    width = length.size

    def step(buf: bytes, pos: int, end: int) -> int:
        p = pos + width
        if p > end:
            raise RequestCheckError(f"frame ends inside the length of a {kind}")
        n: int = length.unpack_from(buf, pos)[0]
        if n < 0:
            if n == -1 and nullable:
                return p
            raise RequestCheckError(f"{kind} length {n}" + ("" if n != -1 else " (null) where the schema requires one"))
        if n > end - p:
            raise RequestCheckError(f"{kind} of {n} bytes, {end - p} bytes left")
        return p + n

    return step


def _array_step(compact: bool, nullable: bool, element: Step | None, element_size: int) -> Step:
    """An array of elements each at least ``element_size`` bytes; ``element`` None means fixed-size elements."""
    min_size = max(1, element_size)

    def step(buf: bytes, pos: int, end: int) -> int:
        if compact:
            n, p = _uvarint(buf, pos, end)
            if n == 0:
                if nullable:
                    return p
                raise RequestCheckError("null array where the schema requires one")
            n -= 1
        else:
            p = pos + 4
            if p > end:
                raise RequestCheckError("frame ends inside an array length")
            n = _I32.unpack_from(buf, pos)[0]
            if n < 0:
                if n == -1 and nullable:
                    return p
                raise RequestCheckError(
                    f"array length {n}" + ("" if n != -1 else " (null) where the schema requires an array")
                )
        left = end - p
        if n > left // min_size:
            raise RequestCheckError(f"array of {n} elements, {left} bytes left")
        if element is None:
            return p + n * element_size
        for i in range(n):
            try:
                p = element(buf, p, end)
            except RequestCheckError as e:
                raise e.within(f"[{i}]") from None
        return p

    return step


class _EntityPlan:
    """The steps of one schema class (its fields in kio's reading order, then its tagged fields)."""

    __slots__ = ("fields", "flexible", "min_size", "nullable", "tags")

    def __init__(
        self,
        field_steps: tuple[tuple[str, Step], ...],
        tags: dict[int, tuple[str, Step]],
        flexible: bool,
        nullable: bool,
        min_size: int,
    ) -> None:
        self.fields = field_steps
        self.tags = tags
        self.flexible = flexible
        self.nullable = nullable
        self.min_size = min_size

    def __call__(self, buf: bytes, pos: int, end: int) -> int:
        if self.nullable:
            if pos >= end:
                raise RequestCheckError("frame ends where a nullable struct marker was expected")
            marker = buf[pos]
            pos += 1
            if marker == 0xFF:
                return pos
            if marker != 1:
                raise RequestCheckError(f"nullable struct marker {marker} (expected -1 or 1)")
        for name, field_step in self.fields:
            try:
                pos = field_step(buf, pos, end)
            except RequestCheckError as e:
                raise e.within(name) from None
        if not self.flexible:
            return pos
        try:
            count, pos = _uvarint(buf, pos, end)
        except RequestCheckError as e:
            raise e.within("<tagged fields>") from None
        if count > (end - pos) // 2:  # each tagged field takes at least a tag and a size byte
            raise RequestCheckError(f"{count} tagged fields, {end - pos} bytes left").within("<tagged fields>")
        for _ in range(count):
            try:
                tag, pos = _uvarint(buf, pos, end)
                size, pos = _uvarint(buf, pos, end)
            except RequestCheckError as e:
                raise e.within("<tagged fields>") from None
            if size > end - pos:
                raise RequestCheckError(f"tagged field {tag} of {size} bytes, {end - pos} bytes left").within(
                    "<tagged fields>"
                )
            known = self.tags.get(tag)
            if known is None:  # kio refuses unknown tags (KeyError); say so before it does
                raise RequestCheckError(f"unknown tagged field {tag}").within("<tagged fields>")
            name, tag_step = known
            stop = pos + size
            try:
                after = tag_step(buf, pos, stop)
            except RequestCheckError as e:
                raise e.within(name) from None
            if after != stop:
                raise RequestCheckError(f"tagged field declares {size} bytes but holds {after - pos}").within(name)
            pos = stop
        return pos


def _field_plan(field: Field[Any], flexible: bool, is_request_header: bool) -> tuple[Step | None, int, int]:
    """(step, minimum encoded size, fixed size or -1) of one field, by the rules kio's reader applies."""
    tagged = get_field_tag(field) is not None
    if is_request_header and field.name == "client_id":  # always a legacy nullable string (Kafka's exception)
        return _legacy_bytes_step(True, "string", _I16), 2, -1
    kind = classify_field(field)
    if isinstance(kind, PrimitiveField | PrimitiveTupleField):
        kafka_type = get_schema_field_type(field)
        fixed = _FIXED.get(kafka_type)
        if isinstance(kind, PrimitiveField):
            if fixed is not None:
                return None, fixed, fixed
            element: Step = _string_step(kafka_type, flexible, is_optional(field) and not tagged)
            return element, (1 if flexible else (2 if kafka_type == "string" else 4)), -1
        # an array of primitives: the elements are never nullable
        if fixed is not None:
            return _array_step(flexible, is_optional(field), None, fixed), (1 if flexible else 4), -1
        element = _string_step(kafka_type, flexible, False)
        element_min = 1 if flexible else (2 if kafka_type == "string" else 4)
        return _array_step(flexible, is_optional(field), element, element_min), (1 if flexible else 4), -1
    if isinstance(kind, EntityField):
        plan = _entity_plan(kind.type_, is_optional(field))
        return plan, plan.min_size, -1
    if isinstance(kind, EntityTupleField):
        plan = _entity_plan(kind.type_, False)
        return _array_step(flexible, is_optional(field), plan, plan.min_size), (1 if flexible else 4), -1
    raise TypeError(f"unsupported schema field {field.name}")


def _string_step(kafka_type: str, flexible: bool, nullable: bool) -> Step:
    kind = "string" if kafka_type == "string" else "bytes"
    if flexible:
        return _compact_bytes_step(nullable, kind)
    return _legacy_bytes_step(nullable, kind, _I16 if kafka_type == "string" else _I32)


@cache
def _entity_plan(cls: type[Any], nullable: bool) -> _EntityPlan:
    flexible = bool(cls.__flexible__)
    is_request_header = cls.__name__ == "RequestHeader"
    steps: list[tuple[str, Step]] = []
    tags: dict[int, tuple[str, Step]] = {}
    run: list[str] = []  # consecutive fixed-size fields, checked as one step
    run_size = 0
    min_size = 1 if nullable else 0
    for field in fields(cls):
        step, field_min, fixed = _field_plan(field, flexible, is_request_header)
        tag = get_field_tag(field)
        if tag is not None:
            tags[int(tag)] = (field.name, step if step is not None else _fixed_step(fixed, (field.name,)))
            continue
        min_size += field_min
        if step is None:
            run.append(field.name)
            run_size += fixed
            continue
        if run:
            steps.append((run[0], _fixed_step(run_size, tuple(run))))
            run, run_size = [], 0
        steps.append((field.name, step))
    if run:
        steps.append((run[0], _fixed_step(run_size, tuple(run))))
    if flexible:
        min_size += 1  # the tagged-field count
    return _EntityPlan(tuple(steps), tags, flexible, nullable, min_size)


@cache
def request_plan(api_key: int, version: int) -> tuple[_EntityPlan, _EntityPlan]:
    """The (header, body) plans of one API version, compiled once. Raises RequestCheckError if kio has none."""
    try:
        cls: Any = load_request_schema(api_key, version)
    except UnknownEntity:
        raise RequestCheckError(f"no request schema for API {api_key} v{version}") from None
    return _entity_plan(cls.__header_schema__, False), _entity_plan(cls, False)


def check_request(frame: bytes, api_key: int, version: int) -> None:
    """Raise RequestCheckError unless ``frame`` (header + body, no size prefix) is safe to give to kio."""
    header, body = request_plan(api_key, version)
    end = len(frame)
    try:
        pos = header(frame, 0, end)
    except RequestCheckError as e:
        raise e.within("header") from None
    pos = body(frame, pos, end)
    if pos != end:
        raise RequestCheckError(f"{end - pos} bytes after the end of the request")
