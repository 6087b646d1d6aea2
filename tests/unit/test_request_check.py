"""brokers/codec/request_check.py: every valid request passes, no hostile length or truncation does.

The valid frames come from tests/request_samples.py (kio's own writer, every advertised API version, arrays
and tagged fields filled); the length positions are found there by an independent walk of kio's schemas.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from kio.index import load_request_schema
from kio.serial import entity_reader

from brokers.codec.request_check import MAX_ARRAY_ELEMENTS, RequestCheckError, check_request, request_plan
from tests.request_samples import (
    advertised_versions,
    encode_request,
    length_positions,
    mutate,
    mutations,
    sample_requests,
    schema_versions,
)

SAMPLES = sample_requests()
ISSUE_FRAME = bytes.fromhex("000000100003000c00000001ffff00ffffffff0f")  # Metadata v12, 2^32 - 1 topics


def _kio_read(frame: bytes, api_key: int, version: int) -> tuple[Any, int]:
    cls: Any = load_request_schema(api_key, version)
    _, used = entity_reader(cls.__header_schema__)(frame, 0)
    body, body_used = entity_reader(cls)(frame, used)
    return body, used + body_used


def test_samples_cover_every_advertised_version_kio_knows() -> None:
    covered = {(k, v) for k, v, _ in SAMPLES}
    assert covered == set(schema_versions())
    missing = set(advertised_versions()) - covered
    assert missing == {(0, 0), (0, 1), (0, 2)}  # Produce v0-v2: advertised for librdkafka, closed before decoding


def test_every_valid_request_passes_and_kio_reads_it_whole() -> None:
    for api_key, version, frame in SAMPLES:
        check_request(frame, api_key, version)
        assert _kio_read(frame, api_key, version)[1] == len(frame), (api_key, version)


def test_a_truncation_at_every_byte_is_refused() -> None:
    tried = 0
    for api_key, version, frame in SAMPLES:
        for cut in range(len(frame)):
            with pytest.raises(RequestCheckError):
                check_request(frame[:cut], api_key, version)
            tried += 1
    assert tried > 10_000


def test_a_hostile_length_at_every_length_position_is_refused() -> None:
    tried = 0
    encodings: set[tuple[str, str]] = set()
    for api_key, version, frame in SAMPLES:
        for pos in length_positions(api_key, version, frame):
            encodings.add((pos.encoding, pos.what))
            for label, value in mutations(pos):
                try:
                    check_request(mutate(frame, pos, value), api_key, version)
                except RequestCheckError:
                    tried += 1
                else:
                    pytest.fail(f"API {api_key} v{version} {pos.path}: length {label} accepted")
    print(f"{tried} hostile lengths refused")
    # every kind of length appears: legacy and compact arrays, strings, bytes, tagged-field counts and sizes
    assert {
        ("int32", "array"),
        ("uvarint", "array"),
        ("int16", "string"),
        ("uvarint", "string"),
        ("int32", "bytes"),
        ("uvarint", "bytes"),
        ("uvarint", "tag-count"),
        ("uvarint", "tag-size"),
    } <= encodings


def test_the_20_byte_frame_of_the_issue_is_refused_naming_the_field() -> None:
    with pytest.raises(RequestCheckError) as caught:
        check_request(ISSUE_FRAME[4:], 3, 12)
    assert str(caught.value) == "topics: array of 4294967294 elements, 0 bytes left"


def test_the_error_names_the_nested_field_path() -> None:
    api_key, version, frame = next(s for s in SAMPLES if s[:2] == (0, 9))  # Produce v9, flexible
    pos = next(p for p in length_positions(api_key, version, frame) if p.path == "topic_data[0].partition_data")
    with pytest.raises(RequestCheckError) as caught:
        check_request(mutate(frame, pos, b"\xff\xff\xff\xff\x0f"), api_key, version)
    assert caught.value.path == "topic_data[0].partition_data"
    assert "array of 4294967294 elements" in str(caught.value)


def test_null_is_refused_where_the_schema_requires_a_value_and_accepted_where_it_allows_one() -> None:
    # Metadata v12 topics is nullable (null = every topic): accepted, and kio reads None
    cls: Any = load_request_schema(3, 12)
    frame = encode_request(3, 12, cls(topics=None, include_topic_authorized_operations=False))
    check_request(frame, 3, 12)
    assert _kio_read(frame, 3, 12)[0].topics is None
    # Produce v9 topic_data is not nullable: kio would hand None to the handler (a TypeError there)
    api_key, version, frame = next(s for s in SAMPLES if s[:2] == (0, 9))
    pos = next(p for p in length_positions(api_key, version, frame) if p.path == "topic_data")
    null_frame = frame[: pos.offset] + b"\x00" + b"\x00"  # topic_data null, then no tagged fields
    assert _kio_read(null_frame, api_key, version)[0].topic_data is None  # what the check protects handlers from
    with pytest.raises(RequestCheckError, match="null array"):
        check_request(null_frame, api_key, version)


def test_a_varint_longer_than_five_bytes_is_refused() -> None:
    frame = ISSUE_FRAME[4:-5] + b"\x81\x80\x80\x80\x80\x00"
    with pytest.raises(RequestCheckError, match="varint longer than 5 bytes"):
        check_request(frame, 3, 12)


def test_trailing_bytes_are_ignored_as_kafka_and_kio_ignore_them() -> None:
    # librdkafka 2.x's Metadata v12 for all topics: topics null, two booleans, no tags, then 01 00 00
    librdkafka = bytes.fromhex("0003000c00000003000772646b61666b61000000000000010000")
    check_request(librdkafka, 3, 12)
    assert _kio_read(librdkafka, 3, 12)[0].topics is None


def _metadata_v12_with_tags(tags: bytes) -> bytes:
    cls: Any = load_request_schema(3, 12)
    frame = encode_request(3, 12, cls(topics=(), include_topic_authorized_operations=False))
    assert frame.endswith(b"\x00")  # the body's empty tagged-field section
    return frame[:-1] + tags


def test_unknown_tags_and_tag_sizes_that_do_not_match_are_refused() -> None:
    with pytest.raises(RequestCheckError, match="unknown tagged field 9"):
        check_request(_metadata_v12_with_tags(b"\x01\x09\x00"), 3, 12)
    with pytest.raises(RequestCheckError, match="tagged field 9 of 100 bytes"):
        check_request(_metadata_v12_with_tags(b"\x01\x09\x64"), 3, 12)
    with pytest.raises(RequestCheckError, match="tagged fields, 0 bytes left"):
        check_request(_metadata_v12_with_tags(b"\x05"), 3, 12)
    # Fetch v16's tagged cluster_id (tag 0): a declared size that differs from the string's
    api_key, version, frame = [s for s in SAMPLES if s[:2] == (1, 16)][1]  # the variant with tags set
    pos = next(p for p in length_positions(api_key, version, frame) if p.what == "tag-size")
    assert pos.path == "cluster_id"
    assert frame[pos.offset] == 7  # "sample" as a compact string: a length byte and 6 bytes
    with pytest.raises(RequestCheckError, match="declares 8 bytes but holds 7"):
        check_request(mutate(frame, pos, b"\x08"), api_key, version)


def test_a_negative_legacy_length_is_refused() -> None:
    api_key, version, frame = next(s for s in SAMPLES if s[:2] == (3, 4))  # Metadata v4, not flexible
    pos = next(p for p in length_positions(api_key, version, frame) if p.path == "topics")
    with pytest.raises(RequestCheckError, match="array length -2"):
        check_request(mutate(frame, pos, struct.pack(">i", -2)), api_key, version)


def test_a_version_kio_has_no_schema_for_is_refused() -> None:
    with pytest.raises(RequestCheckError, match="no request schema for API 0 v0"):
        check_request(b"\x00" * 12, 0, 0)


def test_plans_are_compiled_once() -> None:
    assert request_plan(0, 9) is request_plan(0, 9)


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return bytes(out + bytes([b]))
        out.append(b | 0x80)


def _delete_groups_v2(names: int) -> bytes:
    """DeleteGroups v2 (flexible) naming ``names`` 2-character groups: 3 bytes per element."""
    header = struct.pack(">hhih", 42, 2, 1, 1) + b"x" + b"\x00"
    return header + _uvarint(names + 1) + b"\x03ab" * names + b"\x00"


def test_the_array_elements_of_one_request_are_bounded() -> None:
    check_request(_delete_groups_v2(MAX_ARRAY_ELEMENTS), 42, 2)
    with pytest.raises(RequestCheckError, match=f"more than {MAX_ARRAY_ELEMENTS} array elements"):
        check_request(_delete_groups_v2(MAX_ARRAY_ELEMENTS + 1), 42, 2)
    # the bound counts every array of the request together
    api_key, version, frame = next(s for s in SAMPLES if s[:2] == (0, 9))
    check_request(frame, api_key, version, max_elements=2)  # topic_data[1], partition_data[1]
    with pytest.raises(RequestCheckError, match="more than 1 array elements"):
        check_request(frame, api_key, version, max_elements=1)
