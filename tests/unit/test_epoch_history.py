"""The leader epoch history of a partition (PartitionState.epochs): recorded at every load, bounded, pruned
below the log start, stored compatibly, and answered as Kafka's LeaderEpochFileCache.endOffsetFor."""

from __future__ import annotations

import msgpack
import pytest

from brokers.codec.batch import validate
from brokers.log.partition import LogConfig, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import EPOCH_HISTORY_LIMIT, PartitionState
from tests.batches import make_batch
from tests.memory_ledgers import MemoryLedgerClient


def test_epochs_that_wrote_nothing_do_not_accumulate() -> None:
    s = PartitionState().with_epoch_start(1, 0)
    s = s.with_epoch_start(2, 0)  # epoch 1 wrote nothing: replaced
    assert s.epochs == ((2, 0),)
    s = s.with_epoch_start(3, 10).with_epoch_start(4, 10).with_epoch_start(5, 25)
    assert s.epochs == ((2, 0), (4, 10), (5, 25))
    assert s.with_epoch_start(5, 25) == s  # idempotent (a load that was already recorded)


def test_history_is_bounded_and_pruned_below_the_log_start() -> None:
    s = PartitionState()
    for epoch in range(1, 3 * EPOCH_HISTORY_LIMIT):
        s = s.with_epoch_start(epoch, epoch * 10)
    assert len(s.epochs) == EPOCH_HISTORY_LIMIT
    assert s.epochs[-1] == (3 * EPOCH_HISTORY_LIMIT - 1, (3 * EPOCH_HISTORY_LIMIT - 1) * 10)
    t = PartitionState(log_start_offset=25, epochs=((1, 0), (2, 10), (3, 20), (4, 30)))
    assert t.with_epoch_start(5, 40).epochs == ((3, 25), (4, 30), (5, 40))  # epoch 3 holds the log start


def test_end_offset_for_as_kafka() -> None:
    s = PartitionState(epoch=7, epochs=((2, 0), (4, 10), (7, 25)))
    log_end = 40
    assert s.end_offset_for(7, log_end) == (7, 40)  # the current epoch: the log end offset
    assert s.end_offset_for(4, log_end) == (4, 25)  # ends where the next one starts
    assert s.end_offset_for(5, log_end) == (4, 25)  # epochs 5 and 6 wrote nothing: the largest epoch <= 5
    assert s.end_offset_for(2, log_end) == (2, 10)
    assert s.end_offset_for(1, log_end) == (1, 0)  # older than every known epoch: the first one's start
    assert s.end_offset_for(8, log_end) == (-1, -1)  # newer than any: undefined
    assert s.end_offset_for(-1, log_end) == (-1, -1)
    assert PartitionState().end_offset_for(0, 0) == (-1, -1)  # no history


def test_codec_is_backwards_compatible() -> None:
    s = PartitionState(epoch=3, log_start_offset=5, epochs=((1, 0), (3, 9)))
    assert PartitionState.decode(s.encode()) == s
    old = msgpack.packb({"epoch": 3, "start": 5, "ledgers": [], "producers": []}, use_bin_type=True)
    assert PartitionState.decode(old) == PartitionState(epoch=3, log_start_offset=5)  # stored before it existed
    assert b"epochs" not in PartitionState(epoch=3).encode()  # none: the stored bytes are as before


@pytest.mark.asyncio
async def test_each_load_records_its_epoch_at_the_log_end() -> None:
    store = await EmbeddedMetadataStore.open(None)
    ledgers = MemoryLedgerClient()
    keys = Keys("c")

    async def load() -> PartitionLog:
        plog = PartitionLog(store, keys, ledgers, "topic", 0, LogConfig())
        await plog.load()
        return plog

    async def write(plog: PartitionLog, records: int) -> None:
        batch = make_batch(records=records)
        await (await plog.append(batch, validate(batch)))

    try:
        first = await load()
        await write(first, 3)
        second = await load()  # a takeover: first's open ledger is recovered, epoch 2 starts at 3
        await write(second, 2)
        third = await load()  # epoch 3 starts at 5 and writes nothing
        fourth = await load()
        found = await store.get(keys.partition("topic", 0))
        assert found is not None
        assert PartitionState.decode(found.value).epochs == ((1, 0), (2, 3), (4, 5))
        assert fourth.end_offset_for_epoch(1) == (1, 3)
        assert fourth.end_offset_for_epoch(3) == (2, 5)
        assert fourth.end_offset_for_epoch(4) == (4, 5)
        await write(fourth, 1)
        assert fourth.end_offset_for_epoch(4) == (4, 6)
        for plog in (first, second, third, fourth):
            await plog.close()
    finally:
        await store.close()
