"""The bookie's index checkpoint, journal reclamation behind it, compaction, and tail damage at start-up."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from storage.bookie import checkpoint
from storage.bookie.bookie import Bookie, DataDirLocked
from storage.bookie.journal import Journal
from storage.bookie.maintenance import MaintenanceConfig
from storage.entry import CorruptEntry
from storage.ledger.api import LedgerFenced, NoSuchEntry, NoSuchLedger

ROLL = 16 * 1024


def data(ledger_id: int, entry_id: int, size: int = 500) -> bytes:
    head = f"{{{ledger_id}/{entry_id}}}".encode()
    return (head * (size // len(head) + 1))[:size]


async def fill(bookie: Bookie, ledger_id: int, first: int, count: int, size: int = 500) -> None:
    ids = range(first, first + count)
    await asyncio.gather(
        *(bookie.add_entry(ledger_id, i, i - 1, data(ledger_id, i, size), ledger_length=i * size) for i in ids)
    )


async def state_of(bookie: Bookie, ledgers: list[int], last: int) -> dict[int, object]:
    """What a client can observe of each ledger: entries 0..last (or the error), LAC, fenced."""
    out: dict[int, object] = {}
    for ledger_id in ledgers:
        try:
            entries: list[tuple[int, int, bytes] | None] = []
            for entry_id in range(last + 1):
                try:
                    e = await bookie.read_entry(ledger_id, entry_id)
                    entries.append((e.entry_id, e.ledger_length, e.payload))
                except NoSuchEntry:
                    entries.append(None)
            lac = await bookie.read_lac(ledger_id)
            state = bookie._index.ledger(ledger_id)
            out[ledger_id] = (entries, lac, state is not None and state.fence_durable)
        except NoSuchLedger:
            out[ledger_id] = "deleted"
    return out


@pytest.mark.asyncio
async def test_a_clean_restart_replays_nothing(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="c", journal_roll_size=ROLL)
    assert not bookie.startup.from_checkpoint
    await fill(bookie, 1, 0, 200)
    await fill(bookie, 2, 0, 50)
    await bookie.fence(2)
    await fill(bookie, 3, 0, 10)
    await bookie.delete_ledger(3)
    before = await state_of(bookie, [1, 2, 3], 200)
    await bookie.close()
    assert checkpoint.path_in(tmp_path).exists()

    again = await Bookie.open(tmp_path, journal_roll_size=ROLL)
    assert again.startup.from_checkpoint and again.startup.replayed_bytes == 0
    assert await state_of(again, [1, 2, 3], 200) == before
    with pytest.raises(LedgerFenced):
        await again.add_entry(2, 50, 49, b"late")
    await again.close()
    rescanned = await Bookie.open(tmp_path, journal_roll_size=ROLL, use_checkpoint=False)
    assert not rescanned.startup.from_checkpoint and rescanned.startup.replayed_bytes > 0
    assert await state_of(rescanned, [1, 2, 3], 200) == before
    await rescanned.close()


@pytest.mark.asyncio
async def test_after_a_crash_only_the_journal_past_the_checkpoint_is_replayed(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="c", journal_roll_size=ROLL)
    await fill(bookie, 1, 0, 100)
    stats = await bookie.checkpoint()
    await fill(bookie, 1, 100, 100)
    await bookie.fence(1)
    await bookie.add_entry(1, 200, 199, b"recovery add", recovery=True)
    end = bookie.journal.applied_position
    before = await state_of(bookie, [1], 201)
    await bookie.crash()

    again = await Bookie.open(tmp_path, journal_roll_size=ROLL)
    assert again.startup.from_checkpoint
    files = Journal.list_files(tmp_path / "journal")
    expected = sum((tmp_path / "journal" / f"journal-{f:08d}.log").stat().st_size for f in files if f > stats.file_no)
    expected += (tmp_path / "journal" / f"journal-{stats.file_no:08d}.log").stat().st_size - stats.offset
    assert again.startup.replayed_bytes == expected
    assert again.journal.applied_position == end
    assert await state_of(again, [1], 201) == before
    await again.close()


@pytest.mark.parametrize("damage", ["flipped", "truncated", "foreign", "ahead-of-journal"])
@pytest.mark.asyncio
async def test_an_unusable_checkpoint_means_a_full_rescan(tmp_path: Path, damage: str) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="c", journal_roll_size=ROLL)
    await fill(bookie, 1, 0, 100)
    await bookie.fence(1)
    before = await state_of(bookie, [1], 100)
    await bookie.close()
    path = checkpoint.path_in(tmp_path)
    raw = path.read_bytes()
    if damage == "flipped":
        path.write_bytes(raw[:40] + bytes([raw[40] ^ 1]) + raw[41:])
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "foreign":
        cp = checkpoint.decode(raw)
        path.write_bytes(checkpoint.encode(checkpoint.Checkpoint("another", cp.file_no, cp.offset, cp.index)))
    else:  # the checkpoint claims more journal than there is
        cp = checkpoint.decode(raw)
        path.write_bytes(checkpoint.encode(checkpoint.Checkpoint("c", cp.file_no, cp.offset + 10**6, cp.index)))
    again = await Bookie.open(tmp_path, journal_roll_size=ROLL)
    assert not again.startup.from_checkpoint
    assert await state_of(again, [1], 100) == before
    fresh = checkpoint.read(tmp_path)  # the rescan's result is checkpointed at once, replacing the bad one
    assert fresh is not None and fresh.bookie_id == "c"
    assert (fresh.file_no, fresh.offset) == again.journal.applied_position
    await again.crash()
    third = await Bookie.open(tmp_path, journal_roll_size=ROLL)
    assert third.startup.from_checkpoint and third.startup.replayed_bytes == 0
    assert await state_of(third, [1], 100) == before
    await third.close()


@pytest.mark.asyncio
async def test_files_are_reclaimed_only_behind_the_checkpoint(tmp_path: Path) -> None:
    # a checkpoint is "expensive" here: reclamation must not write one inline
    config = MaintenanceConfig(cost_ratio=1e9, background=False)
    bookie = await Bookie.open(tmp_path, bookie_id="c", journal_roll_size=ROLL, maintenance=config)
    await bookie.checkpoint()  # at the very start: nothing is behind it
    for i in range(120):
        await bookie.add_entry(7, i, i - 1, data(7, i))
    await fill(bookie, 8, 0, 40)
    files = Journal.list_files(tmp_path / "journal")
    assert len(files) > 4
    await bookie.delete_ledger(7)
    assert set(files) <= set(Journal.list_files(tmp_path / "journal"))  # dead, but past the checkpoint: kept
    await bookie.crash()

    again = await Bookie.open(tmp_path, journal_roll_size=ROLL)  # checkpoint + replay of everything after
    with pytest.raises(NoSuchLedger):
        await again.read_entry(7, 0)
    assert len(await again.read_range(8, 0, 39)) == 40
    await again.checkpoint()
    await again.compact()
    remaining = Journal.list_files(tmp_path / "journal")
    assert remaining[0] > files[0]  # with a checkpoint past them, ledger 7's files went
    await again.crash()
    for use in (True, False):
        third = await Bookie.open(tmp_path, journal_roll_size=ROLL, use_checkpoint=use)
        with pytest.raises(NoSuchLedger):
            await third.read_entry(7, 119)
        assert [e.payload for e in await third.read_range(8, 0, 39)] == [data(8, i) for i in range(40)]
        await third.close()


@pytest.mark.asyncio
async def test_compaction_frees_files_pinned_by_a_few_live_records(tmp_path: Path) -> None:
    config = MaintenanceConfig(background=False)  # compaction only when the test says
    bookie = await Bookie.open(tmp_path, bookie_id="c", journal_roll_size=ROLL, maintenance=config)
    await bookie.add_entry(3, 0, -1, data(3, 0))  # ledger 3 will be fenced, its fence record in file 1
    await bookie.fence(3)
    await bookie.add_entry(5, 0, -1, data(5, 0))  # ledger 5 deleted early: its delete record is needed
    await bookie.delete_ledger(5)  # ... while ledger 5's entry stays in file 1
    for i in range(300):  # ledger 1 (doomed) fills the files; every 30th entry belongs to ledger 2 (kept)
        await bookie.add_entry(1, i, i - 1, data(1, i))
        if i % 30 == 0:
            await bookie.add_entry(2, i // 30, i // 30 - 1, data(2, i // 30), ledger_length=i)
    await fill(bookie, 9, 0, 40)  # something in the newest files
    files = Journal.list_files(tmp_path / "journal")
    await bookie.delete_ledger(1)
    assert bookie.maintenance.candidates()  # sparse files, pinned by ledger 2's entries (and 3's fence)
    before = await state_of(bookie, [1, 2, 3, 5, 9], 40)
    await bookie.compact()
    after = Journal.list_files(tmp_path / "journal")
    assert len(after) < len(files) // 2
    assert bookie.maintenance.compacted_files > 0
    assert await state_of(bookie, [1, 2, 3, 5, 9], 40) == before
    with pytest.raises(LedgerFenced):
        await bookie.add_entry(3, 1, 0, b"fenced still")
    await bookie.close()
    for use in (True, False):  # the same from the checkpoint and from what is left of the journal
        again = await Bookie.open(tmp_path, journal_roll_size=ROLL, use_checkpoint=use)
        if use:
            assert await state_of(again, [1, 2, 3, 5, 9], 40) == before
        else:  # a full rescan may forget a deleted ledger once none of its records is left: it is unknown
            rescanned = await state_of(again, [1, 2, 3, 5, 9], 40)
            assert rescanned[5] in ("deleted", ([None] * 41, -1, False))
            assert {k: v for k, v in rescanned.items() if k != 5} == {k: v for k, v in before.items() if k != 5}
        with pytest.raises(LedgerFenced):
            await again.add_entry(3, 1, 0, b"fenced still")
        await again.close()


@pytest.mark.asyncio
async def test_damage_inside_the_newest_file_is_not_a_torn_tail(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="c")
    await fill(bookie, 1, 0, 50)
    where = bookie.entry_location(1, 20)
    assert where is not None
    await bookie.crash()
    checkpoint.remove(tmp_path)
    path, offset, size = where
    with open(path, "r+b") as f:  # bit rot in an acknowledged entry of the file being written
        f.seek(offset + size // 2)
        f.write(b"\x00\xff\x00")
    length = path.stat().st_size
    again = await Bookie.open(tmp_path)
    assert path.stat().st_size == length  # not truncated: entries after it survive
    with pytest.raises(CorruptEntry):  # reported as damaged, never as "no such entry"
        await again.read_entry(1, 20)
    assert [e.payload for e in await again.read_range(1, 21, 49)] == [data(1, i) for i in range(21, 50)]
    await again.add_entry(1, 50, 49, b"appends go on")
    await again.close()


@pytest.mark.asyncio
async def test_one_process_per_data_directory(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path)
    with pytest.raises(DataDirLocked):
        await Bookie.open(tmp_path)
    await bookie.close()
    again = await Bookie.open(tmp_path)
    await again.close()


@pytest.mark.asyncio
async def test_periodic_checkpoints_follow_the_journal(tmp_path: Path) -> None:
    bookie = await Bookie.open(
        tmp_path, bookie_id="c", journal_roll_size=ROLL, maintenance=MaintenanceConfig(checkpoint_bytes=64 * 1024)
    )
    await fill(bookie, 1, 0, 400)
    for _ in range(2000):  # bounded: the background pass runs right after the threshold is crossed
        if bookie.maintenance.last_checkpoint is not None:
            break
        await asyncio.sleep(0.005)
    stats = bookie.maintenance.last_checkpoint
    assert stats is not None and stats.offset > 0
    await bookie.crash()
    os.sync()
    again = await Bookie.open(tmp_path, journal_roll_size=ROLL)
    assert again.startup.from_checkpoint
    assert again.startup.replayed_bytes < 400 * 552
    assert [e.payload for e in await again.read_range(1, 0, 399)] == [data(1, i) for i in range(400)]
    await again.close()


@pytest.mark.asyncio
async def test_a_read_racing_compaction_finds_the_moved_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bookie = await Bookie.open(
        tmp_path, bookie_id="c", journal_roll_size=ROLL, maintenance=MaintenanceConfig(background=False)
    )
    await bookie.add_entry(2, 0, -1, data(2, 0))  # a live entry in file 1, among ...
    for i in range(100):  # ... a ledger that will be deleted
        await bookie.add_entry(1, i, i - 1, data(1, i))
    await bookie.delete_ledger(1)
    assert 1 in bookie.maintenance.candidates()
    real = bookie.journal.read_many
    raced: list[bool] = []

    async def racing(locations: list[tuple[int, int, int, int]]) -> tuple[list[bytes], Exception | None]:
        if not raced:  # between the index lookup and the read, the entry moves and its file goes
            raced.append(True)
            await bookie.compact()
        return await real(locations)

    monkeypatch.setattr(bookie.journal, "read_many", racing)
    assert (await bookie.read_entry(2, 0)).payload == data(2, 0)
    assert raced and 1 not in Journal.list_files(tmp_path / "journal")
    raced.clear()
    assert [e.payload for e in await bookie.read_range(2, 0, 0)] == [data(2, 0)]
    await bookie.close()


@pytest.mark.asyncio
async def test_an_abandoned_checkpoint_write_never_overtakes_a_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="c", maintenance=MaintenanceConfig(background=False))
    await fill(bookie, 1, 0, 10)
    real = checkpoint.write
    first_started, release = threading.Event(), threading.Event()

    def slow_write(data_dir: Path, cp: checkpoint.Checkpoint) -> int:
        if not first_started.is_set():
            first_started.set()
            release.wait(30)
        return real(data_dir, cp)

    monkeypatch.setattr(checkpoint, "write", slow_write)
    old = asyncio.ensure_future(bookie.checkpoint())
    assert await asyncio.to_thread(first_started.wait, 30)
    old.cancel()  # e.g. a background pass cancelled by a shutdown: its thread keeps writing
    await fill(bookie, 1, 10, 10)
    newer = asyncio.ensure_future(bookie.checkpoint())
    await asyncio.sleep(0.05)
    assert not newer.done()  # waits for the abandoned write instead of racing it
    release.set()
    stats = await newer
    stored = checkpoint.read(tmp_path)
    assert stored is not None and (stored.file_no, stored.offset) == (stats.file_no, stats.offset)
    assert stats.offset == bookie.journal.applied_position[1]
    await bookie.close()
