"""brokers/codec/produce_response.py writes byte for byte what kio writes for a successful Produce response."""

from __future__ import annotations

import datetime
import io
import random
from typing import Any

import pytest
from kio.schema.errors import ErrorCode
from kio.serial import entity_writer

from brokers.codec.produce_response import MAX_VERSION, MIN_VERSION, encode_success
from brokers.handlers.base import NO_THROTTLE, make, response_module


def _kio(version: int, topics: list[tuple[str, list[tuple[int, int, int, int]]]]) -> bytes:
    mod: Any = response_module(0, version)
    body = make(
        mod.ProduceResponse,
        responses=tuple(
            make(
                mod.TopicProduceResponse,
                name=name,
                partition_responses=tuple(
                    make(
                        mod.PartitionProduceResponse,
                        index=index,
                        error_code=ErrorCode.none,
                        base_offset=base,
                        log_append_time=None
                        if append < 0
                        else datetime.datetime.fromtimestamp(append / 1000, tz=datetime.UTC),
                        log_start_offset=start,
                        record_errors=(),
                        error_message=None,
                    )
                    for index, base, append, start in parts
                ),
            )
            for name, parts in topics
        ),
        throttle_time=NO_THROTTLE,
        node_endpoints=(),
    )
    out = io.BytesIO()
    entity_writer(type(body))(out, body)
    return out.getvalue()


@pytest.mark.parametrize("version", range(MIN_VERSION, MAX_VERSION + 1))
def test_same_bytes_as_kio(version: int) -> None:
    rng = random.Random(version)
    cases: list[list[tuple[str, list[tuple[int, int, int, int]]]]] = [
        [("t", [(0, 0, -1, 0)])],
        [("bench-topic", [(2, 123_456_789, -1, 1000)])],
        [("x" * 200, [(i, rng.randrange(2**62), rng.choice([-1, 1_700_000_000_123]), rng.randrange(2**40))
                      for i in range(150)])],
        [(f"topic-{k}", [(i, rng.randrange(2**31), -1, 0) for i in range(rng.randrange(1, 5))]) for k in range(70)],
        [("ünïcode-✓", [(7, 1, 1_700_000_000_000, 0)])],
        [],
    ]  # fmt: skip
    for topics in cases:
        assert encode_success(version, topics) == _kio(version, topics)


def test_versions_outside_the_range_are_refused() -> None:
    with pytest.raises(ValueError, match="v2"):
        encode_success(2, [])
    with pytest.raises(ValueError, match="v13"):
        encode_success(13, [])
