"""The bookie server core: adds, reads, LAC, fencing, deletion, journal file reclamation, health."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage.bookie.bookie import Bookie
from storage.bookie.journal import Journal
from storage.bookie.protocol import LocalBookieClient
from storage.entry import BookieUnavailable, entry_crc
from storage.ledger.api import LedgerFenced, NoSuchEntry, NoSuchLedger


def data(ledger_id: int, entry_id: int, size: int = 300) -> bytes:
    head = f"[{ledger_id}.{entry_id}]".encode()
    return (head * (size // len(head) + 1))[:size]


@pytest.mark.asyncio
async def test_add_and_read(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path)
    for i in range(10):
        await bookie.add_entry(5, i, i - 1, data(5, i), ledger_length=300 * (i + 1))
    entry = await bookie.read_entry(5, 4)
    assert (entry.entry_id, entry.ledger_length, entry.payload) == (4, 1500, data(5, 4))
    assert [e.entry_id for e in await bookie.read_range(5, 2, 6)] == [2, 3, 4, 5, 6]
    assert [e.entry_id for e in await bookie.read_range(5, 8, 20)] == [8, 9]  # stops at the first gap
    assert [e.entry_id for e in await bookie.read_range(5, 0, 9, max_bytes=700)] == [0, 1, 2]
    with pytest.raises(NoSuchEntry):
        await bookie.read_entry(5, 10)
    with pytest.raises(NoSuchEntry):
        await bookie.read_range(5, 10, 12)
    with pytest.raises(NoSuchEntry):
        await bookie.read_entry(6, 0)  # a ledger this bookie never saw
    assert await bookie.read_lac(5) == 8
    assert await bookie.read_lac(6) == -1
    await bookie.close()


@pytest.mark.asyncio
async def test_memoryview_payloads_are_stored_without_copies_and_read_back(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path)
    buf = bytearray(b"0123456789" * 100)
    await bookie.add_entry(1, 0, -1, memoryview(buf)[10:510], crc=entry_crc(memoryview(buf)[10:510]))
    assert (await bookie.read_entry(1, 0)).payload == bytes(buf[10:510])
    await bookie.close()


@pytest.mark.asyncio
async def test_fence_refuses_adds_but_not_recovery_adds(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path)
    for i in range(4):
        await bookie.add_entry(1, i, i - 1, data(1, i))
    assert await bookie.fence(1) == 2
    assert await bookie.fence(1) == 2  # idempotent
    with pytest.raises(LedgerFenced):
        await bookie.add_entry(1, 4, 3, data(1, 4))
    await bookie.add_entry(1, 4, 3, data(1, 4), recovery=True)
    assert (await bookie.read_entry(1, 4)).payload == data(1, 4)
    await bookie.add_entry(2, 0, -1, b"other ledgers are not fenced")
    await bookie.close()


@pytest.mark.asyncio
async def test_an_add_that_got_in_before_the_fence_is_in_its_answer(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path)
    add = asyncio.ensure_future(bookie.add_entry(1, 6, 5, b"in flight"))
    await asyncio.sleep(0)  # the add has passed its fence check and is queued in the journal
    assert await bookie.fence(1) == 5
    assert add.done() and add.exception() is None
    assert (await bookie.read_entry(1, 6)).payload == b"in flight"
    await bookie.close()


@pytest.mark.asyncio
async def test_delete_ledger(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path)
    for i in range(3):
        await bookie.add_entry(1, i, -1, data(1, i))
        await bookie.add_entry(2, i, -1, data(2, i))
    await bookie.delete_ledger(1)
    await bookie.delete_ledger(1)  # idempotent
    with pytest.raises(NoSuchLedger):
        await bookie.read_entry(1, 0)
    with pytest.raises(NoSuchLedger):
        await bookie.read_range(1, 0, 2)
    with pytest.raises(NoSuchLedger):
        await bookie.add_entry(1, 3, 2, b"late add")
    with pytest.raises(NoSuchLedger):
        await bookie.fence(1)
    with pytest.raises(NoSuchLedger):
        await bookie.read_lac(1)
    await bookie.delete_ledger(77)  # never seen: the deletion is still recorded
    with pytest.raises(NoSuchLedger):
        await bookie.add_entry(77, 0, -1, b"straggler")
    assert len(await bookie.read_range(2, 0, 2)) == 3
    assert (await bookie.health()).entries == 3
    await bookie.close()


@pytest.mark.asyncio
async def test_journal_files_of_deleted_ledgers_are_reclaimed(tmp_path: Path) -> None:
    roll = 8 * 1024
    bookie = await Bookie.open(tmp_path, journal_roll_size=roll)
    for i in range(100):  # ledger 1 alone fills the first files
        await bookie.add_entry(1, i, i - 1, data(1, i))
    for i in range(30):  # then ledgers 1 and 2 share files
        await bookie.add_entry(1, 100 + i, 99 + i, data(1, 100 + i))
        await bookie.add_entry(2, i, i - 1, data(2, i))
    for i in range(50):  # then ledger 2 alone
        await bookie.add_entry(2, 30 + i, 29 + i, data(2, 30 + i))
    journal_dir = tmp_path / "journal"
    files_before = Journal.list_files(journal_dir)
    assert len(files_before) > 6

    await bookie.delete_ledger(1)
    files_after = Journal.list_files(journal_dir)
    assert files_after[0] > files_before[0]  # the files holding only ledger 1 are gone
    assert len(files_after) < len(files_before)
    assert [e.payload for e in await bookie.read_range(2, 0, 79)] == [data(2, i) for i in range(80)]
    await bookie.close()

    again = await Bookie.open(tmp_path, journal_roll_size=roll)
    assert [e.payload for e in await again.read_range(2, 0, 79)] == [data(2, i) for i in range(80)]
    with pytest.raises(NoSuchLedger):  # ledger 1's delete record survived with its shared files
        await again.read_entry(1, 110)
    await again.delete_ledger(2)
    for i in range(200):  # roll past the files the deletions emptied
        await again.add_entry(3, i, i - 1, data(3, i))
    await again.delete_ledger(4)
    remaining = Journal.list_files(journal_dir)
    assert remaining[0] >= files_after[-1]  # that one also holds ledger 3's first entries
    await again.close()
    third = await Bookie.open(tmp_path, journal_roll_size=roll)
    for ledger_id, entry_id in ((1, 0), (1, 110), (2, 0), (2, 79)):
        with pytest.raises((NoSuchLedger, NoSuchEntry)):
            await third.read_entry(ledger_id, entry_id)
    assert len(await third.read_range(3, 0, 199)) == 200
    await third.close()


@pytest.mark.asyncio
async def test_health_and_close(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="b-1")
    client = LocalBookieClient(bookie)
    assert client.bookie_id == "b-1"
    await client.add(1, 0, -1, 5, b"hello", entry_crc(b"hello"))
    health = await client.health()
    assert health.ok and health.bookie_id == "b-1" and health.ledgers == 1 and health.entries == 1
    assert health.fsyncs >= 1
    await bookie.close()
    assert not (await bookie.health()).ok
    with pytest.raises(BookieUnavailable):
        await client.add(1, 1, 0, 10, b"world", entry_crc(b"world"))
    with pytest.raises(BookieUnavailable):
        await client.read(1, 0)


@pytest.mark.asyncio
async def test_bookie_id_is_kept_and_checked(tmp_path: Path) -> None:
    first = await Bookie.open(tmp_path)
    bookie_id = first.bookie_id
    await first.close()
    second = await Bookie.open(tmp_path)
    assert second.bookie_id == bookie_id
    await second.close()
    with pytest.raises(ValueError, match="belongs to bookie"):
        await Bookie.open(tmp_path, bookie_id="someone-else")
