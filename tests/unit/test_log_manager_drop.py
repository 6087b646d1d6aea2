"""LogManager.drop_topic run twice at once for one topic (two DeleteTopics racing; the 1M-frame fuzz run found a
KeyError there): both finish, every log is closed once, and the ledger ids come back between them."""

from __future__ import annotations

import asyncio

import pytest

from brokers.codec import batch
from brokers.log.manager import LogManager
from brokers.log.partition import LogConfig
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient

TOPIC = "00000000-0000-0000-0000-0000000000aa"


@pytest.mark.asyncio
async def test_concurrent_drops_of_one_topic() -> None:
    store = await EmbeddedMetadataStore.open(None)
    manager = LogManager(store, Keys("drop"), MemoryLedgerClient(), LogConfig())
    try:
        logs = [await manager.get(TOPIC, p) for p in range(4)]
        for plog in logs:  # an open ledger each: closing it awaits, so the two drops interleave
            data = make_batch(2)
            await (await plog.append(data, batch.validate(data)))
        held = {ref.ledger_id for plog in logs for ref in plog.ledgers}
        first, second = await asyncio.gather(manager.drop_topic(TOPIC), manager.drop_topic(TOPIC))
        assert len(held) == 4 and set(first) | set(second) == held and not set(first) & set(second)
        assert all(manager.loaded(TOPIC, p) is None for p in range(4))
    finally:
        await store.close()
