"""A partition log on a real in-process bookie whose disk fills (issue 9): appends get KAFKA_STORAGE_ERROR
while the journal refuses writes, carry on by themselves once it takes writes again (no reload), and every
acknowledged batch reads back."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from brokers.codec import batch
from brokers.log.partition import LogConfig, LogError, PartitionLog
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie import journal as journal_module
from storage.bookie.bookie import Bookie
from storage.bookie.protocol import LocalBookieClient
from storage.ledger.client import QuorumLedgerClient
from tests.batches import make_batch

KEYS = Keys("t")


async def _append(plog: PartitionLog, data: bytes) -> int:
    result = await (await plog.append(data, batch.validate(data)))
    return result.base_offset


@pytest.mark.asyncio
async def test_appends_get_storage_error_while_the_disk_is_full_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "PROBE_INTERVAL_S", 3600.0)
    store = await EmbeddedMetadataStore.open(None)
    bookie = await Bookie.open(tmp_path / "bookie", reserve_bytes=64 * 1024)
    local = LocalBookieClient(bookie)
    ledgers = QuorumLedgerClient(store, KEYS, {local.bookie_id: local})
    plog = PartitionLog(store, KEYS, ledgers, "tid", 0, LogConfig(ensemble_size=1, write_quorum=1, ack_quorum=1))
    await plog.load()
    acked = [await _append(plog, make_batch(2, base_ts=1000 + i)) for i in range(5)]

    real_pwritev = os.pwritev
    full = {"on": True}

    def pwritev(fd: int, bufs: list[bytes], offset: int) -> int:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwritev(fd, bufs, offset)

    monkeypatch.setattr(os, "pwritev", pwritev)
    codes = []
    for i in range(5):
        try:
            acked.append(await _append(plog, make_batch(2, base_ts=2000 + i)))
        except LogError as e:
            codes.append(e.code)
        await asyncio.sleep(0.12)  # past the partition's retry backoff: each append tries the bookie again
    assert codes and set(codes) == {ErrorCode.kafka_storage_error}, codes

    full["on"] = False  # room again: the journal's probe writes its reserve back, appends go through
    monkeypatch.setattr(journal_module, "PROBE_INTERVAL_S", 0.05)
    bookie.journal._probe_at = 0.0
    await bookie.delete_ledger(10**9)  # wakes the writer thread (deletes always go through)
    for _ in range(200):
        try:
            acked.append(await _append(plog, make_batch(2, base_ts=3000)))
            break
        except LogError as e:
            assert e.code == ErrorCode.kafka_storage_error
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("appends did not resume")
    seen, offset = [], 0
    while offset < plog.high_watermark:
        for head in batch.iter_headers(b"".join((await plog.read(offset, 1 << 20)).batches)):
            seen.append(head.base_offset)
            offset = head.last_offset + 1
    assert set(acked) <= set(seen)
    await plog.close()
    await ledgers.close()
    await bookie.close()
    await store.close()
