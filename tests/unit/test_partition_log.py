"""PartitionLog over an in-memory ledger client: offsets, rollover, recovery, idempotence, reads."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.codec import batch
from brokers.log.partition import LogConfig, LogError, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import PartitionState
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient

KEYS = Keys("t")


@pytest_asyncio.fixture
async def store() -> EmbeddedMetadataStore:
    return await EmbeddedMetadataStore.open(None)


async def _append(plog: PartitionLog, data: bytes) -> int:
    headers = batch.validate(data)
    result = await (await plog.append(data, headers))
    return result.base_offset


@pytest.mark.asyncio
async def test_offsets_are_contiguous_across_rollovers(store: EmbeddedMetadataStore) -> None:
    ledgers = MemoryLedgerClient()
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=400))
    await plog.load()
    bases = [await _append(plog, make_batch(3, base_ts=1000 + 10 * i)) for i in range(20)]
    assert bases == list(range(0, 60, 3))
    assert plog.high_watermark == 60
    assert len(plog.ledgers) > 3  # rolled over many times
    out = []
    offset = 0
    while offset < 60:
        result = await plog.read(offset, 1 << 20)
        for head in batch.iter_headers(b"".join(result.batches)):
            out.append(head.base_offset)
            offset = head.last_offset + 1
    assert out == bases


@pytest.mark.asyncio
async def test_reads_from_ledgers_after_restart_and_timestamp_lookup(store: EmbeddedMetadataStore) -> None:
    ledgers = MemoryLedgerClient()
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300))
    await plog.load()
    for i in range(10):
        await _append(plog, make_batch(2, base_ts=1000 + 100 * i))
    # a crash: no close; a new owner takes over and recovers the open ledger
    again = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300))
    await again.load()
    assert again.high_watermark == 20 and again.epoch == plog.epoch + 1
    result = await again.read(7, 1)
    (head,) = batch.iter_headers(b"".join(result.batches))
    assert head.base_offset == 6  # the whole batch holding offset 7
    found = await again.find_by_timestamp(1500)
    assert found is not None
    assert batch.iter_headers(found)[0].base_offset == 10
    assert await again.find_by_timestamp(10_000) is None
    assert await _append(again, make_batch(1)) == 20  # no gap, no reuse
    stored = await store.get(KEYS.partition("tid", 0))
    assert stored is not None
    assert all(r.closed for r in PartitionState.decode(stored.value).ledgers[:-1])


@pytest.mark.asyncio
async def test_idempotent_duplicates_and_gaps(store: EmbeddedMetadataStore) -> None:
    plog = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig())
    await plog.load()
    first = make_batch(3, producer_id=5, base_seq=0)
    assert await _append(plog, first) == 0
    assert await _append(plog, make_batch(2, producer_id=5, base_seq=3)) == 3
    assert await _append(plog, first) == 0  # a retry is answered with its original offset
    assert plog.high_watermark == 5
    with pytest.raises(LogError) as info:
        await _append(plog, make_batch(1, producer_id=5, base_seq=9))
    assert info.value.code == ErrorCode.out_of_order_sequence_number


@pytest.mark.asyncio
async def test_out_of_range_reads(store: EmbeddedMetadataStore) -> None:
    plog = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig())
    await plog.load()
    await _append(plog, make_batch(2))
    assert (await plog.read(2, 100)).batches == []
    with pytest.raises(LogError) as info:
        await plog.read(3, 100)
    assert info.value.code == ErrorCode.offset_out_of_range


@pytest.mark.asyncio
async def test_age_rollover_closes_idle_ledgers(store: EmbeddedMetadataStore) -> None:
    plog = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig(rollover_ms=1))
    await plog.load()
    await _append(plog, make_batch(2))
    await asyncio.sleep(0.01)
    assert await plog.roll_if_aged()
    assert plog.ledgers[-1].closed and plog.ledgers[-1].last_offset == 1
    assert not await plog.roll_if_aged()  # nothing open any more
    assert await _append(plog, make_batch(1)) == 2
    assert len(plog.ledgers) == 2


@pytest.mark.asyncio
async def test_advance_start_drops_whole_ledgers_below_it(store: EmbeddedMetadataStore) -> None:
    plog = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig(rollover_bytes=300))
    await plog.load()
    for i in range(10):
        await _append(plog, make_batch(2, base_ts=1000 + i))
    before = [r.ledger_id for r in plog.ledgers]
    dropped = await plog.advance_start(9)
    assert dropped and set(dropped) < set(before)
    assert plog.log_start_offset == 9
    assert all(r.last_offset >= 9 or not r.closed for r in plog.ledgers)
    with pytest.raises(LogError) as info:
        await plog.read(8, 100)
    assert info.value.code == ErrorCode.offset_out_of_range
    result = await plog.read(9, 1 << 20)
    assert batch.iter_headers(b"".join(result.batches))[0].base_offset == 8  # the batch holding 9
    assert await plog.advance_start(5) == []  # never moves back
    with pytest.raises(LogError):
        await plog.advance_start(21)
