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
import uuid
from dataclasses import MISSING, Field, fields
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
    return tuple(out)


def sample_requests(topic: str = SAMPLE_TOPIC) -> list[tuple[int, int, bytes]]:
    """(api_key, version, header+body) for every advertised API version kio has a schema for, two variants each."""
    return list(_samples(topic))
