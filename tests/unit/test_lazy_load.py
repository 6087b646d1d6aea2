"""Partitions are loaded on first use: a restarted broker loads nothing at start, then in the background only
partitions whose stored state shows work (an open ledger to recover, data to offload or retain); never
written ones stay unloaded until a client uses them. Acknowledged records survive a crash either way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from brokers.broker import Broker
from brokers.codec import batch
from brokers.config import BrokerConfig
from metadata.embedded import EmbeddedMetadataStore
from metadata.models import PartitionState
from storage.objectstore import MemoryObjectStore
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient

WAIT = 30.0  # hang guard only


@pytest.mark.asyncio
async def test_restart_loads_only_partitions_with_pending_work(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(None)
    ledgers, objects = MemoryLedgerClient(), MemoryObjectStore()
    config = BrokerConfig(data_dir=str(tmp_path), port=0).with_overrides(["offload.enable=false"])
    first = Broker(config, store, ledgers, objects)
    await first.start()
    idle = await first.topics.create("idle", 4, 1, {})
    busy = await first.topics.create("busy", 2, 1, {})
    plog = await first.logs.get(busy.topic_id, 0)
    data = make_batch(3, base_ts=1000)
    await (await plog.append(data, batch.validate(data)))  # acknowledged, its ledger still open
    for task in list(first._background):  # the first broker "crashes": nothing is closed
        task.cancel()
    assert first.logs.loaded(idle.topic_id, 0) is None  # creating a topic loads none of its partitions

    second = Broker(config, store, ledgers, objects)
    await second.start()
    try:
        assert all(second.logs.loaded(t.topic_id, p) is None for t in (idle, busy) for p in range(t.partitions))

        async def recovered() -> None:
            while second.logs.loaded(busy.topic_id, 0) is None:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(recovered(), WAIT)  # the background pass: an open ledger is pending work
        found = second.logs.loaded(busy.topic_id, 0)
        assert found is not None and found.high_watermark == 3
        stored = await store.get(second.keys.partition(busy.topic_id, 0))
        assert stored is not None and all(ref.closed for ref in PartitionState.decode(stored.value).ledgers)
        loaded, failed = await second.load_pending(pause_s=0)  # nothing else has work
        assert (loaded, failed) == (0, [])
        assert second.logs.loaded(busy.topic_id, 1) is None
        assert all(second.logs.loaded(idle.topic_id, p) is None for p in range(idle.partitions))
        used = await second.logs.get(idle.topic_id, 2)  # first use loads it
        assert used.epoch == 1 and second.logs.loaded(idle.topic_id, 2) is used
        assert second.logs.loaded_count == 2 + second.groups.partitions  # __consumer_offsets is loaded by groups
    finally:
        await second.stop()
        await store.close()
