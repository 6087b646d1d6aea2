"""The bookie journal: group commit, torn tails, CRCs, restart, and a real kill -9."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from storage.bookie import journal as journal_module
from storage.bookie.bookie import Bookie
from storage.bookie.journal import HEADER_SIZE, BookieDiskError, Journal, JournalRecord, RecordKind, file_name
from storage.entry import BookieUnavailable, CorruptEntry, entry_crc
from storage.ledger.api import LedgerFenced, NoSuchEntry, NoSuchLedger

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


def data(ledger_id: int, entry_id: int, size: int = 200) -> bytes:
    head = f"<{ledger_id}/{entry_id}>".encode()
    return (head * (size // len(head) + 1))[:size]


async def open_journal(path: Path, **kwargs: int) -> tuple[Journal, list[JournalRecord]]:
    records: list[JournalRecord] = []
    journal = await Journal.open(path, records.append, **kwargs)
    return journal, records


def append_entry(journal: Journal, ledger_id: int, entry_id: int, size: int = 200) -> asyncio.Future[JournalRecord]:
    payload = data(ledger_id, entry_id, size)
    return journal.append(RecordKind.ENTRY, ledger_id, entry_id, entry_id - 1, 0, payload, entry_crc(payload))


def entry_ids(records: list[JournalRecord]) -> list[int]:
    return [r.entry_id for r in records if r.kind is RecordKind.ENTRY]


@pytest.mark.asyncio
async def test_records_are_applied_in_order_and_read_back(tmp_path: Path) -> None:
    journal, records = await open_journal(tmp_path)
    futures = [append_entry(journal, 1, i, 10 * i) for i in range(20)]
    futures.append(journal.append(RecordKind.FENCE, 1, -1, -1, 0, b"", 0))
    done = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
    assert records == list(done)  # apply saw every record, in journal order, before its future resolved
    assert [r.kind for r in records] == [RecordKind.ENTRY] * 20 + [RecordKind.FENCE]
    assert records[5].offset == 5 * HEADER_SIZE + sum(10 * i for i in range(5)) + HEADER_SIZE
    got, error = await journal.read_many([(r.file_no, r.offset, r.size, r.crc) for r in records[:20]])
    assert error is None
    assert got == [data(1, i, 10 * i) for i in range(20)]
    await journal.close()
    with pytest.raises(BookieUnavailable):
        append_entry(journal, 1, 99)


@pytest.mark.asyncio
async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    journal, records = await open_journal(tmp_path)

    async def appender(ledger_id: int) -> None:
        for i in range(40):
            await append_entry(journal, ledger_id, i, 1024)

    await asyncio.wait_for(asyncio.gather(*(appender(n) for n in range(50))), WAIT)
    stats = journal.stats()
    assert stats.records == len(records) == 2000
    assert stats.fsyncs == stats.batches
    assert stats.fsyncs < stats.records  # many entries per fsync (one per entry would be 2000)
    await journal.close()


@pytest.mark.asyncio
async def test_everything_queued_during_an_fsync_goes_in_one_write_and_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fdatasync
    calls: list[int] = []
    in_first = threading.Event()
    release = threading.Event()

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            in_first.set()
            release.wait(WAIT)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    journal, records = await open_journal(tmp_path)
    first = append_entry(journal, 1, 0)
    assert await asyncio.to_thread(in_first.wait, WAIT)  # the writer is inside the first fsync
    rest = [append_entry(journal, 1, i, 1024) for i in range(1, 1000)]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), WAIT)
    assert len(calls) == 2
    assert journal.stats().batches == 2
    assert entry_ids(records) == list(range(1000))
    await journal.close()


@pytest.mark.parametrize("damage", ["half-header", "half-payload", "zeros", "bad-crc", "garbage"])
@pytest.mark.asyncio
async def test_torn_tail_is_truncated_and_earlier_records_survive(tmp_path: Path, damage: str) -> None:
    journal, _ = await open_journal(tmp_path)
    await asyncio.gather(*(append_entry(journal, 1, i) for i in range(100)))
    await journal.close()
    path = tmp_path / file_name(1)
    good_size = path.stat().st_size
    payload = data(1, 100)
    record = journal_module.encode_header(RecordKind.ENTRY, 1, 100, 99, 0, len(payload), entry_crc(payload))
    torn = {
        "half-header": record[: HEADER_SIZE // 2],
        "half-payload": record + payload[:50],
        "zeros": bytes(4096),
        "bad-crc": record + payload[:-1] + b"!",
        "garbage": os.urandom(1000),
    }[damage]
    with open(path, "ab") as f:
        f.write(torn)

    journal, records = await open_journal(tmp_path)
    assert entry_ids(records) == list(range(100))
    assert path.stat().st_size == good_size
    await append_entry(journal, 1, 100)  # appends carry on where the good records end
    await journal.close()
    journal, records = await open_journal(tmp_path)
    assert entry_ids(records) == list(range(101))
    got, error = await journal.read_many([(r.file_no, r.offset, r.size, r.crc) for r in records])
    assert error is None and got == [data(1, i) for i in range(101)]
    await journal.close()


@pytest.mark.asyncio
async def test_damage_in_an_older_file_skips_only_the_damaged_record(tmp_path: Path) -> None:
    journal, records = await open_journal(tmp_path, roll_size=8 * 1024)
    for i in range(200):  # one by one, so files roll at record boundaries near 8 KiB
        await append_entry(journal, 1, i)
    await journal.close()
    assert len(Journal.list_files(tmp_path)) > 3
    victim = next(r for r in records if r.file_no == 1 and r.entry_id == 10)
    with open(tmp_path / file_name(1), "r+b") as f:  # smash the header's magic and fields
        f.seek(victim.offset - HEADER_SIZE)
        f.write(b"\xff" * 20)

    journal, replayed = await open_journal(tmp_path, roll_size=8 * 1024)
    assert entry_ids(replayed) == [i for i in range(200) if i != 10]
    await journal.close()


@pytest.mark.asyncio
async def test_crc_mismatch_is_detected_on_read(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="b")
    for i in range(5):
        await bookie.add_entry(1, i, i - 1, data(1, i))
    where = bookie.entry_location(1, 2)
    assert where is not None
    path, offset, _size = where
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"X", offset + 7)
    os.close(fd)
    with pytest.raises(CorruptEntry):
        await bookie.read_entry(1, 2)
    assert (await bookie.read_entry(1, 3)).payload == data(1, 3)
    got = await bookie.read_range(1, 0, 4)  # a range stops before the corrupt entry
    assert [e.entry_id for e in got] == [0, 1]
    with pytest.raises(CorruptEntry):
        await bookie.read_range(1, 2, 4)
    await bookie.close()


@pytest.mark.asyncio
async def test_restart_rebuilds_the_index(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path, bookie_id="b", journal_roll_size=16 * 1024)
    for ledger_id in (1, 2, 3):
        await asyncio.gather(
            *(bookie.add_entry(ledger_id, i, i - 2, data(ledger_id, i, 100 + i), ledger_length=i) for i in range(60))
        )
    assert await bookie.fence(2) == 57
    await bookie.delete_ledger(3)
    before = [await bookie.read_range(1, 0, 59), await bookie.read_range(2, 0, 59)]
    await bookie.close()

    again = await Bookie.open(tmp_path, journal_roll_size=16 * 1024)
    assert again.bookie_id == "b"
    assert len(Journal.list_files(tmp_path / "journal")) > 1
    assert [await again.read_range(1, 0, 59), await again.read_range(2, 0, 59)] == before
    assert before[0][7].ledger_length == 7 and before[0][7].payload == data(1, 7, 107)
    assert await again.read_lac(1) == 57
    with pytest.raises(LedgerFenced):
        await again.add_entry(2, 60, 59, b"late")
    with pytest.raises(NoSuchLedger):
        await again.read_entry(3, 0)
    health = await again.health()
    assert health.ok and health.ledgers == 2 and health.entries == 120
    await again.close()


@pytest.mark.asyncio
async def test_fence_is_durable_across_restart(tmp_path: Path) -> None:
    bookie = await Bookie.open(tmp_path)
    await bookie.add_entry(9, 0, -1, b"zero")
    assert await bookie.fence(9) == -1
    assert await bookie.fence(404) == -1  # a ledger this bookie never saw is fenced too
    await bookie.close()
    bookie = await Bookie.open(tmp_path)
    for ledger_id in (9, 404):
        with pytest.raises(LedgerFenced):
            await bookie.add_entry(ledger_id, 1, 0, b"one")
    await bookie.add_entry(9, 1, 0, b"one", recovery=True)  # recovery writes still get in
    assert (await bookie.read_entry(9, 1)).payload == b"one"
    await bookie.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from storage.bookie.bookie import Bookie

    def data(ledger_id, entry_id):
        head = f"<{ledger_id}/{entry_id}>".encode()
        size = 100 + (entry_id * 37) % 3000
        return (head * (size // len(head) + 1))[:size]

    async def main(path):
        bookie = await Bookie.open(path, bookie_id="crash", journal_roll_size=1 << 20)
        out = sys.stdout

        async def writer(ledger_id):
            entry_id = 0
            while True:
                await bookie.add_entry(ledger_id, entry_id, entry_id - 1, data(ledger_id, entry_id))
                out.write(f"{ledger_id} {entry_id}\\n")
                out.flush()
                entry_id += 1

        await asyncio.gather(*(writer(n) for n in range(1, 17)))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_every_acked_entry_survives_kill_9(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "bookie")], stdout=subprocess.PIPE, env=env, text=True
    )
    acked: list[tuple[int, int]] = []
    try:
        assert proc.stdout is not None
        while len(acked) < 3000:
            line = proc.stdout.readline()
            if not line:
                break
            ledger_id, entry_id = line.split()
            acked.append((int(ledger_id), int(entry_id)))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=WAIT)  # acks printed before the kill count too
    complete_lines = rest.split("\n")[:-1]  # a line cut by the kill has no newline: never acked
    acked += [(int(a), int(b)) for a, b in (line.split() for line in complete_lines)]
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 3000, "the child did not get going"

    async def check() -> None:
        bookie = await Bookie.open(tmp_path / "bookie")
        for ledger_id, entry_id in acked:
            entry = await bookie.read_entry(ledger_id, entry_id)
            size = 100 + (entry_id * 37) % 3000
            head = f"<{ledger_id}/{entry_id}>".encode()
            assert entry.payload == (head * (size // len(head) + 1))[:size]
        await bookie.close()

    asyncio.run(check())


async def _resume(bookie: Bookie, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the writer's next probe run now and wait (bounded) until the journal takes writes again."""
    monkeypatch.setattr(journal_module, "PROBE_INTERVAL_S", 0.05)
    bookie.journal._probe_at = 0.0
    await bookie.delete_ledger(999)  # deletes still go through; it also wakes the writer thread
    for _ in range(200):
        if bookie.journal.disk_error is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the journal did not take writes again")


@pytest.mark.asyncio
async def test_a_failed_fsync_refuses_writes_then_resumes_in_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fsync is never acknowledged; the file it hit is not written again (its state is unknown):
    writes are refused until a probe write succeeds, then go to a new journal file."""
    monkeypatch.setattr(journal_module, "PROBE_INTERVAL_S", 3600.0)
    bookie = await Bookie.open(tmp_path, reserve_bytes=64 * 1024)
    await bookie.add_entry(1, 0, -1, b"before")
    real_fdatasync, real_fsync = os.fdatasync, os.fsync
    broken = {"on": True}

    def fdatasync(fd: int) -> None:
        if broken["on"]:
            raise OSError(5, "Input/output error")
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        if broken["on"]:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(BookieDiskError):
        await bookie.add_entry(1, 1, 0, b"lost")
    with pytest.raises(BookieDiskError):
        await bookie.add_entry(1, 2, 0, b"refused at once")
    health = await bookie.health()
    assert not health.ok and health.error is not None
    assert (await bookie.read_entry(1, 0)).payload == b"before"
    with pytest.raises(NoSuchEntry):
        await bookie.read_entry(1, 1)
    broken["on"] = False
    await _resume(bookie, monkeypatch)
    assert (await bookie.health()).ok
    await bookie.add_entry(1, 1, 0, b"after")
    assert bookie.journal.current_file_no == 2  # a new file, not the one the failed fsync hit
    await bookie.close()
    bookie = await Bookie.open(tmp_path)
    assert [(await bookie.read_entry(1, e)).payload for e in (0, 1)] == [b"before", b"after"]
    await bookie.close()


@pytest.mark.asyncio
async def test_a_full_disk_releases_the_reserve_and_deletes_still_go_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "PROBE_INTERVAL_S", 3600.0)
    bookie = await Bookie.open(tmp_path, reserve_bytes=64 * 1024)
    reserve = tmp_path / "journal" / "reserve"
    assert reserve.stat().st_size == 64 * 1024
    await bookie.add_entry(1, 0, -1, b"to be deleted")
    await bookie.add_entry(2, 0, -1, b"kept")
    real_pwritev = os.pwritev
    full = {"left": 1}

    def pwritev(fd: int, bufs: list[bytes], offset: int) -> int:
        if full["left"]:
            full["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwritev(fd, bufs, offset)

    monkeypatch.setattr(os, "pwritev", pwritev)
    with pytest.raises(BookieDiskError):
        await bookie.add_entry(2, 1, 0, b"not acked")
    assert not reserve.exists(), "the reserve is released for deletes"
    with pytest.raises(BookieDiskError):
        await bookie.add_entry(2, 1, 0, b"refused at once")
    with pytest.raises(BookieDiskError):
        await bookie.fence(2)
    await bookie.delete_ledger(1)  # written with the reserve's space
    with pytest.raises(NoSuchLedger):
        await bookie.read_entry(1, 0)
    assert bookie.journal.stats().disk_error is not None
    await _resume(bookie, monkeypatch)
    assert reserve.stat().st_size == 64 * 1024, "the reserve is back before writes resume"
    await bookie.add_entry(2, 1, 0, b"after")
    await bookie.close()
    bookie = await Bookie.open(tmp_path)
    assert [(await bookie.read_entry(2, e)).payload for e in (0, 1)] == [b"kept", b"after"]
    with pytest.raises(NoSuchLedger):
        await bookie.read_entry(1, 0)
    await bookie.close()
