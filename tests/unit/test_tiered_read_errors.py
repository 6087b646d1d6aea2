"""Reads of offloaded data while the object store fails or hangs (issue 9): retried within a bound, then a
KAFKA_STORAGE_ERROR the fetch reports for the partition, counted; never an empty success."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from kio.schema.errors import ErrorCode

from brokers.log import tiered
from brokers.log.tiered import TieredLog, Tiering
from brokers.log.types import LogError
from metadata.models import PartitionState
from storage.objectstore.api import ObjectStoreUnavailable
from storage.segment.catalog import PartitionSegments


class FlakySegments:
    """A segment catalog whose first ``failures`` reads fail (or hang), then answer one batch."""

    def __init__(self, failures: int, hang: bool = False) -> None:
        self.failures = failures
        self.hang = hang
        self.calls = 0

    async def read(self, offset: int, max_bytes: int) -> list[memoryview]:
        self.calls += 1
        if self.calls <= self.failures:
            if self.hang:
                await asyncio.sleep(3600)
            raise ObjectStoreUnavailable("connection refused")
        return [memoryview(b"batch")]


class Log(TieredLog):
    def __init__(self) -> None:
        self.topic_id = "topic"
        self.partition = 0
        self._state = PartitionState()
        self._tiering = Tiering(objects=cast(Any, None), cache=cast(Any, None), offloader=cast(Any, None))

    async def read(self, segments: FlakySegments) -> list[memoryview]:
        return await self._from_segments(cast(PartitionSegments, segments), 0, 1 << 20)


@pytest.fixture(autouse=True)
def short_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiered, "SEGMENT_READ_BOUND_S", 0.5)
    monkeypatch.setattr(tiered, "SEGMENT_READ_BOUND_DOWN_S", 0.05)
    monkeypatch.setattr(tiered, "SEGMENT_RETRY_MIN_S", 0.01)
    monkeypatch.setattr(tiered, "SEGMENT_RETRY_MAX_S", 0.05)


@pytest.mark.asyncio
async def test_a_failure_within_the_bound_is_retried_unseen() -> None:
    plog, segments = Log(), FlakySegments(failures=2)
    assert [bytes(b) for b in await plog.read(segments)] == [b"batch"]
    assert segments.calls == 3
    assert plog._tiering is not None and plog._tiering.read_failures.count == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("hang", [False, True], ids=["failing", "hanging"])
async def test_a_store_down_past_the_bound_is_a_storage_error_and_counted(hang: bool) -> None:
    plog, segments = Log(), FlakySegments(failures=10**6, hang=hang)
    with pytest.raises(LogError) as raised:
        await plog.read(segments)
    assert raised.value.code == ErrorCode.kafka_storage_error
    assert plog._tiering is not None
    assert plog._tiering.read_failures.count == 1 and plog._tiering.read_failures.last_error is not None
    segments.calls = 0  # the store is still down: the next read fails fast (one short bound), counted again
    with pytest.raises(LogError):
        await plog.read(segments)
    assert plog._tiering.read_failures.count == 2
    segments.failures = 0  # the store is back: the next read works and the failure state clears
    assert [bytes(b) for b in await plog.read(segments)] == [b"batch"]
    assert plog._tiering.read_failures.last_error is None
