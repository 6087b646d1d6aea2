"""PartitionLog over an in-memory ledger client: offsets, rollover, recovery, idempotence, reads, and (with a
ledger client whose confirmations the test controls) the high watermark, retries in flight and ledger
replacement after a write failure. Real bookies: tests/integration/test_bookie_failover.py."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.codec import batch
from brokers.log.partition import AppendResult, LogConfig, LogError, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import PartitionState
from storage.ledger.api import NotEnoughBookies
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient, MemoryWriter

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


# --- confirmations and ledger failures, with a ledger client whose confirmations the test controls ---
class GatedWriter:
    """A writer whose entries are stored and confirmed only when the test says so (``release``), or fail
    (``fail_pending``), like a quorum writer whose bookies answer late or not at all."""

    def __init__(self, inner: MemoryWriter) -> None:
        self.inner = inner
        self.pending: list[tuple[bytes, asyncio.Future[int]]] = []
        self._next = 0
        self._failed = False

    @property
    def ledger_id(self) -> int:
        return self.inner.ledger_id

    @property
    def last_add_confirmed(self) -> int:
        return self.inner.last_add_confirmed

    @property
    def length(self) -> int:
        return self.inner.length

    def append(self, entry: bytes | memoryview) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._failed:
            fut.set_exception(NotEnoughBookies("failed before"))
            return fut
        self.pending.append((bytes(entry), fut))
        return fut

    def release(self, count: int) -> None:
        for data, fut in self.pending[:count]:
            fut.set_result(self.inner.append(data).result())
        del self.pending[:count]

    def fail_pending(self) -> None:
        self._failed = True
        for _data, fut in self.pending:
            fut.set_exception(NotEnoughBookies("bookies gone"))
        self.pending.clear()

    async def close(self) -> int:
        return await self.inner.close()


class GatedLedgers(MemoryLedgerClient):
    def __init__(self) -> None:
        super().__init__()
        self.writers: list[GatedWriter] = []

    async def create_ledger(self, ensemble_size: int, write_quorum: int, ack_quorum: int) -> GatedWriter:  # type: ignore[override]
        writer = GatedWriter(await super().create_ledger(ensemble_size, write_quorum, ack_quorum))
        self.writers.append(writer)
        return writer


async def _queue(plog: PartitionLog, data: bytes) -> asyncio.Future[AppendResult]:
    return await plog.append(data, batch.validate(data))


@pytest.mark.asyncio
async def test_high_watermark_moves_only_over_confirmed_entries(store: EmbeddedMetadataStore) -> None:
    ledgers = GatedLedgers()
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig())
    await plog.load()
    futures = [await _queue(plog, make_batch(2, base_ts=100 * i)) for i in range(3)]
    assert plog.high_watermark == 0 and plog.log_end_offset == 6 and plog.inflight == 3
    assert (await plog.read(0, 1 << 20)).batches == []  # nothing unconfirmed is ever read
    ledgers.writers[0].release(1)
    await asyncio.sleep(0)
    assert plog.high_watermark == 2 and futures[0].done() and not futures[1].done()
    ledgers.writers[0].release(2)
    assert [(await f).base_offset for f in futures] == [0, 2, 4]
    assert plog.high_watermark == 6 and plog.inflight == 0


@pytest.mark.asyncio
async def test_a_retry_of_a_batch_in_flight_is_answered_once_the_original_is_durable(
    store: EmbeddedMetadataStore,
) -> None:
    ledgers = GatedLedgers()
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig())
    await plog.load()
    data = make_batch(3, producer_id=9, base_seq=0)
    original = await _queue(plog, data)
    retry = await _queue(plog, data)
    await asyncio.sleep(0)
    assert not retry.done()  # answering now would acknowledge what is not durable yet
    ledgers.writers[0].release(1)
    assert (await original).base_offset == (await retry).base_offset == 0
    assert plog.high_watermark == 3 and plog.log_end_offset == 3  # written once


@pytest.mark.asyncio
async def test_unconfirmed_entries_are_written_again_to_the_next_ledger_unchanged(
    store: EmbeddedMetadataStore,
) -> None:
    ledgers = GatedLedgers()
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig())
    await plog.load()
    futures = [await _queue(plog, make_batch(2, base_ts=100 * i)) for i in range(5)]
    first = ledgers.writers[0]
    sent = [data for data, _fut in first.pending]
    first.release(2)
    first.fail_pending()  # entries 2..4 never reached a quorum
    async with asyncio.timeout(10):
        while len(ledgers.writers) < 2 or len(ledgers.writers[1].pending) < 3:
            await asyncio.sleep(0.01)
    second = ledgers.writers[1]
    assert [data for data, _fut in second.pending] == sent[2:]  # same bytes, same offsets, same order
    second.release(3)
    assert [(await f).base_offset for f in futures] == [0, 2, 4, 6, 8]
    assert plog.ledger_switches == 1 and plog.high_watermark == 10
    old, new = plog.ledgers
    assert old.closed and old.last_offset == 3 and new.first_offset == 4
    after = await _queue(plog, make_batch(1))  # the new ledger takes appends
    second.release(1)
    assert (await after).base_offset == 10
