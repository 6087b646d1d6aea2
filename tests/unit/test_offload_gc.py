"""The broker's periodic orphan GC (``offload.gc.interval.ms``): objects under an owned partition's prefix
that no segment key and no live intent names are deleted; segments in metadata are kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from brokers.broker import Broker
from brokers.codec import batch
from brokers.config import BrokerConfig
from metadata.embedded import EmbeddedMetadataStore
from metadata.models import SegmentRecord
from storage.objectstore import MemoryObjectStore
from storage.segment.format import partition_prefix
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient

WAIT = 30.0  # hang guard only


@pytest.mark.asyncio
async def test_periodic_gc_deletes_orphans_and_keeps_segments(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(None)
    objects = MemoryObjectStore()
    config = BrokerConfig(data_dir=str(tmp_path), port=0).with_overrides(
        ["offload.enable=true", "ledger.rollover.bytes=400", "offload.gc.interval.ms=50"]
    )
    assert config.offload_gc_interval_ms == 50
    broker = Broker(config, store, MemoryLedgerClient(), objects)
    await broker.start()
    try:
        topic = await broker.topics.create("gc", 1, 1, {})
        plog = await broker.logs.get(topic.topic_id, 0)
        for i in range(12):
            data = make_batch(3, base_ts=1000 + i)
            await (await plog.append(data, batch.validate(data)))
        assert broker.tiering is not None
        await broker.tiering.offloader.idle()
        segments = [
            SegmentRecord.decode(v.value).object_key
            for v in await store.list(broker.keys.segments_prefix(topic.topic_id, 0))
        ]
        assert len(segments) >= 3
        prefix = partition_prefix(broker.keys.cluster, topic.topic_id, 0)
        orphans = [f"{prefix}{99_000 + i:020d}-{900 + i}.seg" for i in range(3)]
        for key in orphans:
            await objects.put(key, b"left behind by a crash")
        other = "elsewhere/not-a-segment"  # outside every partition prefix: never touched
        await objects.put(other, b"x")

        async def listed() -> set[str]:
            return {m.key for m in await objects.list(prefix)}

        async def gone() -> None:
            while not set(orphans).isdisjoint(await listed()):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(gone(), WAIT)
        assert await listed() == set(segments)
        assert await objects.head(other) is not None
        assert broker.tiering.offloader.stats().orphans_deleted >= len(orphans)
        # every segment still reads back: offsets 0..35 contiguous
        offset = 0
        while offset < 36:
            result = await plog.read(offset, 1 << 20)
            heads = batch.iter_headers(b"".join(result.batches))
            assert heads and heads[0].base_offset == offset
            offset = heads[-1].last_offset + 1
    finally:
        await broker.stop()
        await store.close()


@pytest.mark.asyncio
async def test_gc_pass_without_object_store_is_a_no_op(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(None)
    broker = Broker(BrokerConfig(data_dir=str(tmp_path), port=0), store, MemoryLedgerClient())
    try:
        assert await broker.collect_orphans() == 0
    finally:
        await store.close()
