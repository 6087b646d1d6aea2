"""PartitionLog over an in-memory ledger client: offsets, rollover, recovery, idempotence, reads, and (with a
ledger client whose confirmations the test controls) the high watermark, retries in flight and ledger
replacement after a write failure. Real bookies: tests/integration/test_bookie_failover.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterable
from dataclasses import replace

import pytest
import pytest_asyncio
from kio.schema.errors import ErrorCode

from brokers.codec import batch
from brokers.handlers.list_offsets import lookup as list_offsets_lookup
from brokers.log.partition import AppendResult, LogConfig, LogError, PartitionLog, Tiering
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import PartitionState
from storage.ledger.api import NotEnoughBookies
from storage.objectstore import MemoryObjectStore, ObjectStoreUnavailable
from storage.offload import OffloadConfig, Offloader, PartitionMoved
from storage.segment.cache import BlockCache
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


# --- tiers: offload of closed ledgers, reads from segments -------------------------------------------


def _tiering(store: EmbeddedMetadataStore, ledgers: MemoryLedgerClient, objects: MemoryObjectStore) -> Tiering:
    return Tiering(objects, BlockCache(1 << 20), Offloader(store, KEYS, ledgers, objects))


async def _read_all(plog: PartitionLog, offset: int) -> bytes:
    out = bytearray()
    while offset < plog.high_watermark:
        result = await plog.read(offset, 700)
        assert result.batches
        data = b"".join(result.batches)
        heads = batch.iter_headers(data)
        assert heads[0].base_offset <= offset <= heads[0].last_offset
        out += data
        offset = heads[-1].last_offset + 1
    return bytes(out)


@pytest.mark.asyncio
async def test_closed_ledgers_are_offloaded_and_read_back_from_segments(store: EmbeddedMetadataStore) -> None:
    ledgers, objects = MemoryLedgerClient(), MemoryObjectStore()
    tiering = _tiering(store, ledgers, objects)
    config = LogConfig(rollover_bytes=600, tail_cache_bytes=1)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, config, tiering)
    await plog.load()
    for i in range(30):
        await _append(plog, make_batch(3, base_ts=1000 + 10 * i))
    expected = await _read_all(plog, 0)  # read before any offload finished: ledgers and tail
    await tiering.offloader.idle()
    segments = plog.segments
    assert len(segments) >= 5
    assert segments[0].base_offset == 0
    assert all(a.last_offset + 1 == b.base_offset for a, b in itertools.pairwise(segments))
    # every closed ledger is gone from the bookies; only the open tail ledger remains in the log
    assert [r for r in plog.ledgers if not r.offloaded] == [plog.ledgers[-1]]
    assert not plog.ledgers[-1].closed
    assert [await ledgers.ledger_info(s.ledger_id) for s in segments] == [None] * len(segments)
    assert await _read_all(plog, 0) == expected  # byte-exact across segments and the tail ledger
    middle = segments[2].base_offset + 1
    assert (await _read_all(plog, middle)) == expected[expected.index(b"".join((await plog.read(middle, 1)).batches)):]
    found = await plog.find_by_timestamp(1000 + 10 * 4)
    assert found is not None and batch.iter_headers(found)[0].base_offset == 12
    newest = await plog.max_timestamp_entry()
    assert newest is not None and batch.iter_headers(newest)[-1].last_offset == 89
    # a restart (a new owner) reads the segments listed in metadata
    await plog.close()
    await tiering.offloader.close()
    tiering = _tiering(store, ledgers, objects)
    again = PartitionLog(store, KEYS, ledgers, "tid", 0, config, tiering)
    await again.load()
    await tiering.offloader.idle()
    assert again.high_watermark == 90
    assert await _read_all(again, 0) == expected
    assert await _append(again, make_batch(1)) == 90
    await again.close()
    await tiering.offloader.close()


@pytest.mark.asyncio
async def test_offloader_commits_through_the_log_never_deposing_it(store: EmbeddedMetadataStore) -> None:
    ledgers, objects = MemoryLedgerClient(), MemoryObjectStore()
    tiering = _tiering(store, ledgers, objects)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300), tiering)
    await plog.load()
    for i in range(40):  # appends race the background offloads' commits
        await _append(plog, make_batch(2, base_ts=1000 + i))
    await tiering.offloader.idle()
    assert await _append(plog, make_batch(1)) == 80  # still the owner: its cached version is current
    stored = await store.get(KEYS.partition("tid", 0))
    assert stored is not None
    assert PartitionState.decode(stored.value) == await plog.current()
    await plog.close()
    with pytest.raises(PartitionMoved):
        await plog.update(lambda s: s)
    await tiering.offloader.close()


@pytest.mark.asyncio
async def test_offload_disabled_keeps_ledgers(store: EmbeddedMetadataStore) -> None:
    ledgers, objects = MemoryLedgerClient(), MemoryObjectStore()
    tiering = replace(_tiering(store, ledgers, objects), offload=False)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300), tiering)
    await plog.load()
    for i in range(10):
        await _append(plog, make_batch(2, base_ts=1000 + i))
    await tiering.offloader.idle()
    assert plog.segments == ()
    assert len(plog.ledgers) > 2 and not any(r.offloaded for r in plog.ledgers)
    await plog.close()


class _FlakyStore(MemoryObjectStore):
    """A memory object store whose puts fail as an unreachable store's would while ``down``."""

    down = False

    async def put(self, key: str, data: bytes | memoryview, if_absent: bool = True) -> None:
        if self.down:
            raise ObjectStoreUnavailable("object store down (test)")
        await super().put(key, data, if_absent)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes | memoryview], if_absent: bool = True) -> int:
        if self.down:
            raise ObjectStoreUnavailable("object store down (test)")
        return await super().put_stream(key, chunks, if_absent)

    async def get_range(self, key: str, start: int, length: int) -> bytes | memoryview:
        if self.down:
            raise ObjectStoreUnavailable("object store down (test)")
        return await super().get_range(key, start, length)


@pytest.mark.asyncio
async def test_backpressure_while_offload_lags_then_recovers(store: EmbeddedMetadataStore) -> None:
    ledgers, objects = MemoryLedgerClient(), _FlakyStore()
    objects.down = True
    fast = OffloadConfig(backoff_initial_s=0.01, backoff_max_s=0.02)
    offloader = Offloader(store, KEYS, ledgers, objects, config=fast)
    tiering = Tiering(objects, BlockCache(1 << 20), offloader, high_water_bytes=2000)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300), tiering)
    await plog.load()
    acked: list[int] = []
    refused: LogError | None = None
    for i in range(200):
        try:
            acked.append(await _append(plog, make_batch(2, base_ts=1000 + i)))
        except LogError as e:
            refused = e
            break
    assert refused is not None and refused.code == ErrorCode.not_enough_replicas  # retriable for clients
    assert tiering.held.bytes > 2000
    assert acked == list(range(0, 2 * len(acked), 2)) and plog.high_watermark == 2 * len(acked)
    assert plog.segments == ()
    objects.down = False  # the store is back: offload catches up and appends are taken again
    for _attempt in range(1000):
        try:
            acked.append(await _append(plog, make_batch(2, base_ts=5000)))
            break
        except LogError as e:
            assert e.code == ErrorCode.not_enough_replicas
            await asyncio.sleep(0.01)
    await offloader.idle()
    assert acked[-1] == plog.high_watermark - 2
    assert tiering.held.bytes < 2000 and plog.segments
    offset, seen = 0, []
    while offset < plog.high_watermark:  # nothing acknowledged was lost
        for head in batch.iter_headers(b"".join((await plog.read(offset, 1 << 20)).batches)):
            seen.append(head.base_offset)
            offset = head.last_offset + 1
    assert seen == acked
    await plog.close()
    assert tiering.held.bytes == 0
    await offloader.close()


@pytest.mark.asyncio
async def test_delete_records_and_retention_remove_segments_and_objects(store: EmbeddedMetadataStore) -> None:
    ledgers, objects = MemoryLedgerClient(), MemoryObjectStore()
    tiering = _tiering(store, ledgers, objects)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300), tiering)
    await plog.load()
    for i in range(30):
        await _append(plog, make_batch(2, base_ts=1000 + i))
    await tiering.offloader.idle()
    segments = plog.segments
    assert len(segments) >= 6
    cut = segments[2].base_offset + 3  # the second batch of segment 2: its first batch is wholly below
    assert await plog.delete_records(cut) == cut
    assert plog.segments == segments[2:]  # the two wholly below are gone: keys, then objects
    assert {m.key for m in await objects.list("")} == {s.object_key for s in segments[2:]}
    with pytest.raises(LogError) as info:
        await plog.read(cut - 1, 100)
    assert info.value.code == ErrorCode.offset_out_of_range
    assert batch.iter_headers(b"".join((await plog.read(cut, 1)).batches))[0].base_offset == cut - 1
    # ListOffsets by timestamp: records below the start never answer, even inside a cut segment
    first_kept = (1000 + cut // 2 + 1, cut)  # the second record of the batch appended as number cut // 2
    assert await list_offsets_lookup(plog, 0) == first_kept
    assert await list_offsets_lookup(plog, 1000 + cut // 2) == first_kept
    assert await list_offsets_lookup(plog, 1000 + cut // 2 + 2) == (1000 + cut // 2 + 2, cut + 2)
    with pytest.raises(LogError) as info:
        await plog.delete_records(plog.high_watermark + 1)
    assert info.value.code == ErrorCode.offset_out_of_range
    # retention by size deletes while what remains stays >= the limit (Kafka's rule); by time all old goes
    assert plog.unoffloaded_bytes > 0  # the open ledger's bytes count toward retention.bytes too
    keep = sum(s.data_length for s in segments[-2:]) + plog.unoffloaded_bytes
    result = await plog.enforce_retention(retention_bytes=keep)
    assert result is not None and plog.segments == segments[-2:]
    assert plog.log_start_offset == segments[-2].base_offset
    result = await plog.enforce_retention(retention_ms=1000, now_ms=10_000)
    assert result is not None and plog.segments == ()
    assert plog.log_start_offset == segments[-1].last_offset + 1
    assert await objects.list("") == []
    stored = await store.get(KEYS.partition("tid", 0))
    assert stored is not None and PartitionState.decode(stored.value).log_start_offset == plog.log_start_offset
    await plog.close()
    await tiering.offloader.close()


@pytest.mark.asyncio
async def test_segment_read_failures_are_retriable_storage_errors(store: EmbeddedMetadataStore) -> None:
    ledgers, objects = MemoryLedgerClient(), _FlakyStore()
    tiering = _tiering(store, ledgers, objects)
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=300, tail_cache_bytes=1), tiering)
    await plog.load()
    for i in range(10):
        await _append(plog, make_batch(2, base_ts=1000 + i))
    await tiering.offloader.idle()
    assert plog.segments
    objects.down = True
    with pytest.raises(LogError) as info:
        await plog.read(0, 1000)
    assert info.value.code == ErrorCode.kafka_storage_error  # consumers retry it
    with pytest.raises(LogError) as info:
        await plog.find_by_timestamp(1000)
    assert info.value.code == ErrorCode.kafka_storage_error
    objects.down = False
    assert batch.iter_headers(b"".join((await plog.read(0, 1000)).batches))[0].base_offset == 0
    await plog.close()
    await tiering.offloader.close()


@pytest.mark.asyncio
async def test_a_sequence_gap_right_after_a_takeover_is_retriable(store: EmbeddedMetadataStore) -> None:
    """After a load that found data (a takeover), a batch ahead of the expected sequence gets
    NOT_LEADER_OR_FOLLOWER, so the client retries in order instead of bumping its epoch (librdkafka renumbers
    unacknowledged messages on an out-of-order refusal, and wrote ones the old owner had persisted again);
    the in-order batch is accepted, and once the partition has settled a gap is OUT_OF_ORDER as in Kafka."""
    ledgers = MemoryLedgerClient()
    first = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig())
    await first.load()
    assert await _append(first, make_batch(3, producer_id=5, base_seq=0)) == 0
    taken = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig())  # the next owner, while the first is gone
    await taken.load()
    with pytest.raises(LogError) as info:
        await _append(taken, make_batch(1, producer_id=5, base_seq=4))
    assert info.value.code == ErrorCode.not_leader_or_follower
    assert await _append(taken, make_batch(1, producer_id=5, base_seq=3)) == 3
    assert await _append(taken, make_batch(3, producer_id=5, base_seq=0)) == 0  # still a duplicate
    taken._settle_until = 0.0  # the window has passed
    with pytest.raises(LogError) as info:
        await _append(taken, make_batch(1, producer_id=5, base_seq=9))
    assert info.value.code == ErrorCode.out_of_order_sequence_number


@pytest.mark.asyncio
async def test_a_roll_the_metadata_store_refuses_is_a_retriable_error(store: EmbeddedMetadataStore) -> None:
    """A ledger roll whose metadata write fails (etcd unreachable) answers the append NOT_ENOUGH_REPLICAS —
    not an exception that closes the client's connection — and the next append rolls and records it properly:
    the state never shows an open ledger before another; the producer's next batch, arriving before its
    refused one is retried, is refused retriably too (no out-of-order answer to bump its epoch)."""
    from metadata.api import StoreUnavailable

    plog = PartitionLog(store, KEYS, MemoryLedgerClient(), "tid", 0, LogConfig(rollover_bytes=1))
    await plog.load()
    assert await _append(plog, make_batch(2, producer_id=7, base_seq=0)) == 0
    real_put = store.put

    async def unavailable(*args: object, **kwargs: object) -> int:
        raise StoreUnavailable("etcd: UNAVAILABLE")

    store.put = unavailable  # type: ignore[method-assign]
    try:
        with pytest.raises(LogError) as info:
            await _append(plog, make_batch(2, producer_id=7, base_seq=2))
        assert info.value.code == ErrorCode.not_enough_replicas
    finally:
        store.put = real_put  # type: ignore[method-assign]
    with pytest.raises(LogError) as info:  # the next one, sent before the refused one came back
        await _append(plog, make_batch(2, producer_id=7, base_seq=4))
    assert info.value.code == ErrorCode.not_leader_or_follower
    assert await _append(plog, make_batch(2, producer_id=7, base_seq=2)) == 2
    assert await _append(plog, make_batch(2, producer_id=7, base_seq=4)) == 4
    stored = await store.get(KEYS.partition("tid", 0))
    assert stored is not None
    ledgers = PartitionState.decode(stored.value).ledgers
    assert all(r.closed for r in ledgers[:-1]) and len(ledgers) >= 2


@pytest.mark.asyncio
async def test_the_next_ledger_is_created_ahead_and_used_at_rollover(store: EmbeddedMetadataStore) -> None:
    """Past 75% of rollover_bytes the next ledger is created in the background; the rollover starts it
    (no creation under the lock), offsets stay contiguous, and closing the log deletes an unused spare."""
    ledgers = MemoryLedgerClient()
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=1000))
    await plog.load()
    first = plog.ledgers[-1].ledger_id if plog.ledgers else None
    bases = []
    spares_used = 0
    for i in range(40):
        spare = plog._spare  # the ledger created ahead, if any, before this append
        bases.append(await _append(plog, make_batch(2, base_ts=1000 + i)))
        await asyncio.sleep(0)  # let a spare being created finish
        await asyncio.sleep(0)
        if spare is not None and plog.ledgers[-1].ledger_id == spare[0].ledger_id:
            spares_used += 1
    assert bases == list(range(0, 80, 2))
    assert first is None or plog.ledgers[0].ledger_id == first
    assert len(plog.ledgers) > 5
    assert spares_used >= len(plog.ledgers) - 2  # every rollover after the first used a prepared ledger
    # A spare exists now or is on its way: closing the log closes and deletes it, so no empty ledger is left.
    for _ in range(3):
        await asyncio.sleep(0)
    spare = plog._spare
    await plog.close()
    named = {ref.ledger_id for ref in plog.ledgers}
    assert set(ledgers._ledgers) == named
    if spare is not None:
        assert spare[0].ledger_id not in ledgers._ledgers
    again = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(rollover_bytes=1000))
    await again.load()
    assert again.high_watermark == 80
