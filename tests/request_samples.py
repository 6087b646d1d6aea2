"""Valid request frames for every API version the broker advertises, built with kio's own writer.

Shared by the request-check unit tests, the hostile-length e2e test and the fuzz suites: each sample is
(api_key, version, frame) where frame is header + body without the 4-byte size prefix. Values are generated
from kio's schema classes, so every field of every version is present; two variants per version: "minimal"
(arrays of one element, tagged fields left at their defaults, i.e. absent on the wire) and "full" (arrays of
two elements, every tagged field set, nullable fields filled), so that every length position of the schema
appears in at least one sample. Minimal samples use the schema's defaults and nulls where allowed, acks=-1, so
the broker answers them.
"""

from __future__ import annotations

import datetime
import io
import re
import struct
import uuid
from dataclasses import MISSING, Field, dataclass, fields, replace
from functools import cache
from typing import Any

from kio.index import UnknownEntity, load_request_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_writer
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
from tests.batches import make_batch

SAMPLE_TOPIC = "sample-topic"
SAMPLE_GROUP = "sample-group"
_TOPIC_FIELDS = {"name", "topic", "topic_name"}
_GROUP_FIELDS = {"group_id", "group"}
# Minimal samples should be requests a broker answers: acks=-1 (acks=0 gets no response), fetch sizes > 0.
_MINIMAL_OVERRIDES: dict[str, Any] = {
    "acks": -1,
    "max_bytes": 1 << 20,
    "partition_max_bytes": 1 << 20,
    "replica_id": -1,
    "session_epoch": -1,
    "current_leader_epoch": -1,
    "leader_epoch": -1,
    "timeout": datetime.timedelta(seconds=5),
}


def advertised_versions() -> list[tuple[int, int]]:
    """Every (api_key, version) in the ApiVersions answer (advertised_min_version..max_version)."""
    return [
        (key, version)
        for key, spec in sorted(HANDLERS.items())
        for version in range(spec.advertised_min_version, spec.max_version + 1)
    ]


def schema_versions() -> list[tuple[int, int]]:
    """The advertised versions kio has a schema for: all but Produce v0-v2, which are advertised for
    librdkafka's sake (see brokers/handlers/registry.py) and closed before any decoding."""
    out = []
    for key, version in advertised_versions():
        try:
            load_request_schema(key, version)
        except UnknownEntity:
            continue
        out.append((key, version))
    return out


def _primitive(kafka_type: str, name: str, full: bool, topic: str) -> Any:
    if kafka_type == "string":
        if name in _TOPIC_FIELDS:
            return topic
        if name in _GROUP_FIELDS:
            return SAMPLE_GROUP
        return "sample" if full else "s"
    if kafka_type == "records":
        return make_batch(records=3 if full else 1)
    if kafka_type == "bytes":
        return b"sample-bytes" if full else b"b"
    if kafka_type == "uuid":
        return uuid.UUID(int=0x1234_5678)
    if kafka_type == "bool":
        return False
    if kafka_type == "float64":
        return 1.5
    if kafka_type == "error_code":
        return ErrorCode.none
    if kafka_type in ("timedelta_i32", "timedelta_i64"):
        return datetime.timedelta(milliseconds=100)
    if kafka_type == "datetime_i64":
        return datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    if kafka_type in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        return 1 if full else 0
    raise ValueError(f"no sample value for kafka_type {kafka_type!r}")


def _value(field: Field[Any], full: bool, topic: str, depth: int) -> Any:
    tag = get_field_tag(field)
    has_default = field.default is not MISSING or field.default_factory is not MISSING
    if tag is not None and not full and has_default:
        return field.default if field.default is not MISSING else field.default_factory()  # type: ignore[operator]
    kind = classify_field(field)
    count = 2 if full else 1
    if isinstance(kind, PrimitiveField):
        if not full and field.name in _MINIMAL_OVERRIDES:
            return _MINIMAL_OVERRIDES[field.name]
        if not full and field.default is not MISSING:
            return field.default
        if not full and is_optional(field) and get_schema_field_type(field) in ("string", "bytes"):
            return None
        return _primitive(get_schema_field_type(field), field.name, full, topic)
    if isinstance(kind, PrimitiveTupleField):
        return tuple(_primitive(get_schema_field_type(field), field.name, full, topic) for _ in range(count))
    if isinstance(kind, EntityField):
        return build_entity(kind.type_, full, topic, depth + 1)
    if isinstance(kind, EntityTupleField):
        return tuple(build_entity(kind.type_, full, topic, depth + 1) for _ in range(count))
    raise TypeError(f"unclassified field {field.name}")


def build_entity(cls: type[Any], full: bool, topic: str = SAMPLE_TOPIC, depth: int = 0) -> Any:
    """One instance of a kio schema class with every field filled (see the module docstring)."""
    if depth > 8:
        raise RecursionError(f"schema nesting too deep at {cls.__name__}")
    return cls(**{f.name: _value(f, full, topic, depth) for f in fields(cls)})


def encode_request(api_key: int, version: int, body: Any, correlation_id: int = 1, client_id: str = "samples") -> bytes:
    """Header + body bytes of one request (no size prefix), written by kio."""
    cls: Any = load_request_schema(api_key, version)
    header_cls: Any = cls.__header_schema__
    header = header_cls(
        request_api_key=api_key, request_api_version=version, correlation_id=correlation_id, client_id=client_id
    )
    with io.BytesIO() as out:
        entity_writer(header_cls)(out, header)
        entity_writer(cls)(out, body)
        return out.getvalue()


@cache
def _samples(topic: str) -> tuple[tuple[int, int, bytes], ...]:
    out: list[tuple[int, int, bytes]] = []
    for api_key, version in schema_versions():
        cls = load_request_schema(api_key, version)
        for full in (False, True):
            out.append((api_key, version, encode_request(api_key, version, build_entity(cls, full, topic))))
        out.append((api_key, version, encode_request(api_key, version, with_nulls(build_entity(cls, True, topic)))))
    return tuple(out)


def with_nulls(entity: Any) -> Any:
    """``entity`` with every nullable non-tagged field (at any depth) set to None."""
    changes: dict[str, Any] = {}
    for field in fields(entity):
        value = getattr(entity, field.name)
        kind = classify_field(field)
        if get_field_tag(field) is None and is_optional(field):
            changes[field.name] = None
        elif isinstance(kind, EntityField) and value is not None:
            changes[field.name] = with_nulls(value)
        elif isinstance(kind, EntityTupleField):
            changes[field.name] = tuple(with_nulls(v) for v in value)
    return replace(entity, **changes)


def sample_requests(topic: str = SAMPLE_TOPIC) -> list[tuple[int, int, bytes]]:
    """(api_key, version, header+body) for every advertised API version kio has a schema for, three variants each
    (minimal, full, nulls: see the module docstring)."""
    return list(_samples(topic))


# --------------------------------------------------------------------------- length positions


@dataclass(frozen=True)
class LengthPosition:
    """Where a length sits in a sample frame: byte offset, encoded width, encoding and what it counts.

    Found by walking the frame with kio's schema classes directly (independently of
    brokers/codec/request_check.py, so that a mistake there cannot hide a position here).
    """

    offset: int
    width: int  # encoded bytes of the length as written
    encoding: str  # "int16", "int32" or "uvarint"
    what: str  # "array", "string", "bytes", "tag-count", "tag-size"
    nullable: bool
    path: str  # e.g. "topics[0].partitions"

    @property
    def schema_path(self) -> str:
        """The path with element indices removed: one name per position of the schema."""
        return re.sub(r"\[\d+\]", "[]", self.path)


def mutations(pos: LengthPosition) -> list[tuple[str, bytes]]:
    """Hostile values for one position: a huge length, a negative one, and null where null is not allowed."""
    if pos.encoding == "int16":
        out = [("0x7fff", struct.pack(">h", 0x7FFF)), ("-2", struct.pack(">h", -2))]
        if not pos.nullable:
            out.append(("null", struct.pack(">h", -1)))
    elif pos.encoding == "int32":
        out = [("0x7fffffff", struct.pack(">i", 0x7FFFFFFF)), ("-2", struct.pack(">i", -2))]
        if not pos.nullable:
            out.append(("null", struct.pack(">i", -1)))
    else:
        out = [("ffffffff0f", b"\xff\xff\xff\xff\x0f")]
        if not pos.nullable and pos.what in ("array", "string", "bytes"):
            out.append(("null", b"\x00"))
    return out


def mutate(frame: bytes, pos: LengthPosition, value: bytes) -> bytes:
    """``frame`` with the length at ``pos`` replaced by the encoded ``value`` (which may differ in width)."""
    return frame[: pos.offset] + value + frame[pos.offset + pos.width :]


def length_positions(api_key: int, version: int, frame: bytes) -> list[LengthPosition]:
    """Every length in a valid frame (header and body), in frame order."""
    cls: Any = load_request_schema(api_key, version)
    out: list[LengthPosition] = []
    pos = _walk_entity(cls.__header_schema__, frame, 0, "header", out, nullable=False)
    end = _walk_entity(cls, frame, pos, "", out, nullable=False)
    if end != len(frame):
        raise ValueError(f"walked {end} of {len(frame)} bytes")
    return out


_FIXED_WIDTH = {
    "bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "error_code": 2, "int32": 4, "uint32": 4,
    "timedelta_i32": 4, "int64": 8, "uint64": 8, "float64": 8, "timedelta_i64": 8, "datetime_i64": 8, "uuid": 16,
}  # fmt: skip


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _walk_primitive(
    kafka_type: str, flexible: bool, nullable: bool, buf: bytes, pos: int, path: str, out: list[LengthPosition],
    legacy_string: bool = False,
) -> int:  # fmt: skip
    if kafka_type in _FIXED_WIDTH:
        return pos + _FIXED_WIDTH[kafka_type]
    what = "string" if kafka_type == "string" else "bytes"
    if flexible and not legacy_string:
        n, p = _read_uvarint(buf, pos)
        out.append(LengthPosition(pos, p - pos, "uvarint", what, nullable, path))
        return p + max(n - 1, 0)
    fmt = ">h" if kafka_type == "string" else ">i"
    length: int = struct.unpack_from(fmt, buf, pos)[0]
    width = struct.calcsize(fmt)
    out.append(LengthPosition(pos, width, "int16" if width == 2 else "int32", what, nullable, path))
    return pos + width + max(length, 0)


def _walk_field(
    field: Field[Any], flexible: bool, header: bool, buf: bytes, pos: int, path: str, out: list[LengthPosition]
) -> int:
    tagged = get_field_tag(field) is not None
    if header and field.name == "client_id":
        return _walk_primitive("string", flexible, True, buf, pos, path, out, legacy_string=True)
    kind = classify_field(field)
    if isinstance(kind, PrimitiveField):
        kafka_type = get_schema_field_type(field)
        return _walk_primitive(kafka_type, flexible, is_optional(field) and not tagged, buf, pos, path, out)
    if isinstance(kind, EntityField):
        return _walk_entity(kind.type_, buf, pos, path, out, nullable=is_optional(field))
    # arrays
    if flexible:
        n, p = _read_uvarint(buf, pos)
        out.append(LengthPosition(pos, p - pos, "uvarint", "array", is_optional(field), path))
        n -= 1
    else:
        (n,) = struct.unpack_from(">i", buf, pos)
        p = pos + 4
        out.append(LengthPosition(pos, 4, "int32", "array", is_optional(field), path))
    for i in range(max(n, 0)):
        item = f"{path}[{i}]"
        if isinstance(kind, EntityTupleField):
            p = _walk_entity(kind.type_, buf, p, item, out, nullable=False)
        else:
            p = _walk_primitive(get_schema_field_type(field), flexible, False, buf, p, item, out)
    return p


def _walk_entity(cls: type[Any], buf: bytes, pos: int, path: str, out: list[LengthPosition], nullable: bool) -> int:
    if nullable:
        marker = buf[pos]
        pos += 1
        if marker == 0xFF:
            return pos
    flexible = bool(cls.__flexible__)
    header = cls.__name__ == "RequestHeader"
    tagged: dict[int, Field[Any]] = {}
    for field in fields(cls):
        tag = get_field_tag(field)
        if tag is not None:
            tagged[int(tag)] = field
            continue
        pos = _walk_field(field, flexible, header, buf, pos, _join(path, field.name), out)
    if not flexible:
        return pos
    count, p = _read_uvarint(buf, pos)
    out.append(LengthPosition(pos, p - pos, "uvarint", "tag-count", True, _join(path, "<tagged fields>")))
    pos = p
    for _ in range(count):
        wire_tag, pos = _read_uvarint(buf, pos)
        size, p = _read_uvarint(buf, pos)
        name = _join(path, tagged[wire_tag].name)
        out.append(LengthPosition(pos, p - pos, "uvarint", "tag-size", True, name))
        end = _walk_field(tagged[wire_tag], flexible, header, buf, p, name, out)
        if end != p + size:
            raise ValueError(f"tagged field {name} is {end - p} bytes, declared {size}")
        pos = end
    return pos
