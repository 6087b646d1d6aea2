"""ClusterRouting (brokers/cluster/routing.py): a partition's leader is its owner only while the owner is a live
broker in the same view, so a Metadata answer never names a leader missing from its broker list."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from brokers.cluster.handover import OwnersView
from brokers.cluster.membership import LiveBrokers
from brokers.cluster.routing import ClusterRouting
from brokers.routing import Leader
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import BrokerRecord, OwnerRecord

KEYS = Keys("routing")
TOPIC = "00000000-0000-0000-0000-000000000001"


async def _until(predicate: object) -> None:
    assert callable(predicate)
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_an_owner_that_is_not_a_live_broker_is_no_leader() -> None:
    store = await EmbeddedMetadataStore.open(None)
    live, owners = LiveBrokers(store, KEYS), OwnersView(store, KEYS)
    await live.start()
    await owners.start()
    routing = ClusterRouting(1, live, owners, SimpleNamespace(leader_id=None), set(), lambda: True)  # type: ignore[arg-type]
    try:
        await store.put(KEYS.owner(TOPIC, 0), OwnerRecord(2, 7).encode())
        await _until(lambda: owners.owner_of(TOPIC, 0) is not None)
        assert routing.leader(TOPIC, 0) is None  # owned by node 2, which is not registered (yet, or any more)
        before = routing.generation
        await store.put(KEYS.broker(2), BrokerRecord(2, "127.0.0.1", 9092).encode())
        await _until(lambda: routing.leader(TOPIC, 0) is not None)
        assert routing.leader(TOPIC, 0) == Leader(2, 7)
        assert routing.generation != before  # cached Metadata answers are rebuilt
        await store.delete(KEYS.broker(2))
        await _until(lambda: routing.leader(TOPIC, 0) is None)
    finally:
        await owners.stop()
        await live.stop()
        await store.close()
