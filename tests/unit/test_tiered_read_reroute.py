"""Issue 9 (fuzz): a bookie that already dropped an offloaded ledger's entries answers NoSuchEntry rather than
NoSuchLedger. Fetch, ListOffsets by timestamp and by max timestamp must route such a read again (the segment
has the data by then), and after ``READ_ATTEMPTS`` give the client a retriable KAFKA_STORAGE_ERROR, never let
the storage exception escape as an internal error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.codec import batch
from brokers.log.partition import LogConfig, LogError, PartitionLog
from brokers.log.tiered import READ_ATTEMPTS
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.ledger.api import NoSuchEntry, NoSuchLedger
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient

KEYS = Keys("t")
LOOKUPS = ("read", "find_by_timestamp", "max_timestamp_entry")


@pytest_asyncio.fixture
async def plog() -> PartitionLog:
    """A log whose batches are read from ledgers: a second owner, so its tail cache is empty."""
    store = await EmbeddedMetadataStore.open(None)
    ledgers = MemoryLedgerClient()
    first = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300))
    await first.load()
    for i in range(6):
        data = make_batch(2, base_ts=1000 + 100 * i)
        await (await first.append(data, batch.validate(data)))
    again = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300))
    await again.load()
    assert again.high_watermark == 12
    return again


def _failing(real: Callable[..., Awaitable[Any]], times: int, error: Exception) -> tuple[Callable[..., Any], list[int]]:
    """``real``, raising ``error`` on its first ``times`` calls; the list counts the calls."""
    calls = [0]

    async def lookup(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] <= times:
            raise error
        return await real(*args)

    return lookup, calls


async def _call(plog: PartitionLog, name: str) -> Any:
    if name == "read":
        return (await plog.read(5, 1)).batches
    if name == "find_by_timestamp":
        return await plog.find_by_timestamp(1300)
    return await plog.max_timestamp_entry()


def _first_base(name: str, got: Any) -> int:
    data = b"".join(got) if name == "read" else got
    return batch.iter_headers(data)[0].base_offset


EXPECTED_BASE = {"read": 4, "find_by_timestamp": 6, "max_timestamp_entry": 10}


@pytest.mark.asyncio
@pytest.mark.parametrize("error", [NoSuchEntry("ledger 1 entry 0 not on bookie"), NoSuchLedger("deleted")])
@pytest.mark.parametrize("name", LOOKUPS)
async def test_a_vanished_ledger_is_routed_again(
    plog: PartitionLog, monkeypatch: pytest.MonkeyPatch, name: str, error: Exception
) -> None:
    lookup, calls = _failing(getattr(plog._lookup, name), 1, error)
    monkeypatch.setattr(plog._lookup, name, lookup)
    got = await _call(plog, name)
    assert got
    assert _first_base(name, got) == EXPECTED_BASE[name]
    assert calls[0] == 2  # the failed attempt, then the re-routed one


@pytest.mark.asyncio
@pytest.mark.parametrize("error", [NoSuchEntry("ledger 1 entry 0 not on bookie"), NoSuchLedger("deleted")])
@pytest.mark.parametrize("name", LOOKUPS)
async def test_a_ledger_that_keeps_vanishing_is_a_storage_error(
    plog: PartitionLog, monkeypatch: pytest.MonkeyPatch, name: str, error: Exception
) -> None:
    lookup, calls = _failing(getattr(plog._lookup, name), 1_000, error)
    monkeypatch.setattr(plog._lookup, name, lookup)
    with pytest.raises(LogError) as raised:
        await _call(plog, name)
    assert raised.value.code == ErrorCode.kafka_storage_error
    assert calls[0] == READ_ATTEMPTS
