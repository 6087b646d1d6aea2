"""Bookies as separate OS processes (``tidelog bookie``) on 127.0.0.1, reached over TCP.

Replication across processes, kill -9 and restart, on-disk corruption detected by CRC and served from
another replica, clean shutdown, and registration in a real etcd under a lease.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata.embedded import EmbeddedMetadataStore
from metadata.etcd import EtcdMetadataStore
from metadata.keys import Keys
from storage.bookie import checkpoint
from storage.bookie.bookie import Bookie
from storage.bookie.journal import Journal, RecordKind, file_name, scan_file
from storage.bookie.registry import BookieWatcher
from storage.bookie.tcp_client import TcpBookieClient
from storage.entry import CorruptEntry
from storage.ledger.api import LedgerState, NoSuchEntry
from storage.ledger.client import QuorumLedgerClient
from tests.etcd_server import EtcdServer, etcd_available
from tests.integration.bookie_process import BookieProcess, BookieProcessError

WAIT = 60.0


def payload(ledger_id: int, entry_id: int, size: int = 2000) -> bytes:
    head = f"<{ledger_id}:{entry_id}>".encode()
    return (head * (size // len(head) + 1))[:size]


@pytest.fixture
def bookies(tmp_path: Path) -> Iterator[list[BookieProcess]]:
    procs = [BookieProcess(tmp_path / f"b{i}", bookie_id=f"b{i}") for i in range(3)]
    for proc in procs:
        proc.start()
    try:
        yield procs
    finally:
        for proc in procs:
            proc.close()


def transports(procs: list[BookieProcess], max_backoff: float = 2.0) -> dict[str, TcpBookieClient]:
    return {p.bookie_id: TcpBookieClient(p.bookie_id, "127.0.0.1", p.port, max_backoff=max_backoff) for p in procs}


def locate(data_dir: Path, ledger_id: int, entry_id: int) -> tuple[Path, int, int]:
    """(file, payload offset, size) of the newest journal record of an entry, found by reading the files."""
    found: list[tuple[Path, int, int]] = []
    journal_dir = data_dir / "journal"
    for file_no in Journal.list_files(journal_dir):
        path = journal_dir / file_name(file_no)

        def apply(rec: object, path: Path = path) -> None:
            if (rec.kind, rec.ledger_id, rec.entry_id) == (RecordKind.ENTRY, ledger_id, entry_id):  # type: ignore[attr-defined]
                found.append((path, rec.offset, rec.size))  # type: ignore[attr-defined]

        scan_file(path, file_no, False, apply)
    assert found, f"no record of entry {ledger_id}:{entry_id} in {journal_dir}"
    return found[-1]


def flip(path: Path, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0xA5]), offset)
    finally:
        os.close(fd)


@pytest.mark.asyncio
async def test_replicated_ledger_survives_kill_9_of_a_bookie(bookies: list[BookieProcess]) -> None:
    store = await EmbeddedMetadataStore.open(None)
    tcp = transports(bookies, max_backoff=0.2)
    client = QuorumLedgerClient(store, Keys("procs"), tcp)
    writer = await client.create_ledger(3, 3, 2)
    entries = [payload(writer.ledger_id, i) for i in range(600)]
    first = await asyncio.wait_for(asyncio.gather(*(writer.append(e) for e in entries[:300])), WAIT)
    assert list(first) == list(range(300))
    victim = next(p for p in bookies if p.bookie_id == writer.info.ensemble[0])
    assert victim.kill9() == -9
    # Qa = 2 of 3: the writer carries on with the two bookies left
    rest = await asyncio.wait_for(asyncio.gather(*(writer.append(e) for e in entries[300:])), WAIT)
    assert list(rest) == list(range(300, 600))
    assert await writer.close() == 599
    reader = await client.open_ledger(writer.ledger_id)
    assert await reader.read(0, 599) == entries  # reads fall over past the dead bookie

    victim.start()  # same port: its transport reconnects
    survivor = tcp[victim.bookie_id]
    for _ in range(500):  # bounded: the transport's reconnect backoff is at most 0.2 s
        try:
            got = await survivor.read_range(writer.ledger_id, 0, 299)
            break
        except Exception:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the restarted bookie never answered")
    assert [e.payload for e in got] == entries[: len(got)] and len(got) > 0
    for entry_id in range(300):  # every entry it had acknowledged before the kill is still there
        assert (await survivor.read(writer.ledger_id, entry_id)).payload == entries[entry_id]
    for t in tcp.values():
        await t.close()
    await store.close()


@pytest.mark.asyncio
async def test_flipped_bytes_on_a_bookie_disk_are_caught_and_read_elsewhere(bookies: list[BookieProcess]) -> None:
    store = await EmbeddedMetadataStore.open(None)
    tcp = transports(bookies)
    client = QuorumLedgerClient(store, Keys("procs"), tcp)
    writer = await client.create_ledger(3, 3, 2)
    entries = [payload(writer.ledger_id, i, 5000) for i in range(40)]
    await asyncio.wait_for(asyncio.gather(*(writer.append(e) for e in entries)), WAIT)
    await writer.close()
    info = writer.info
    reader = await client.open_ledger(writer.ledger_id)
    # the reader's first choice for entry 17 (E = Qw: bulk reads go in the reader's order), so it must fall over
    assert info.write_quorum == len(info.ensemble)
    first_choice = reader._order[0]
    victim = next(p for p in bookies if p.bookie_id == first_choice)
    for _ in range(500):  # the third copy is acknowledged after the quorum: wait until it is on disk
        try:
            path, offset, size = locate(victim.data_dir, writer.ledger_id, 17)
            break
        except AssertionError:
            await asyncio.sleep(0.02)
    flip(path, offset + size // 3)  # bit rot in the running bookie's journal file

    with pytest.raises(CorruptEntry, match="CRC"):
        await tcp[victim.bookie_id].read(writer.ledger_id, 17)
    assert await reader.read(17, 17) == [entries[17]]
    assert await reader.read(0, 39) == entries
    # the damage is still detected after the bookie restarts (it is reported, never silently dropped)
    victim.stop()
    victim.start()
    for _ in range(500):
        try:
            await tcp[victim.bookie_id].read(writer.ledger_id, 16)
            break
        except Exception:
            await asyncio.sleep(0.05)
    with pytest.raises(CorruptEntry):
        await tcp[victim.bookie_id].read(writer.ledger_id, 17)
    assert (await tcp[victim.bookie_id].read(writer.ledger_id, 18)).payload == entries[18]
    assert await reader.read(0, 39) == entries
    for t in tcp.values():
        await t.close()
    await store.close()


@pytest.mark.asyncio
async def test_sigterm_is_a_clean_shutdown(tmp_path: Path) -> None:
    proc = BookieProcess(tmp_path / "b", bookie_id="clean")
    proc.start()
    client = TcpBookieClient("clean", "127.0.0.1", proc.port)
    store = await EmbeddedMetadataStore.open(None)
    ledgers = QuorumLedgerClient(store, Keys("c"), {"clean": client})
    writer = await ledgers.create_ledger(1, 1, 1)
    entries = [payload(writer.ledger_id, i) for i in range(200)]
    await asyncio.gather(*(writer.append(e) for e in entries))
    assert proc.stop() == 0
    assert "stopped" in proc.log_tail()
    proc.start()
    reader = await ledgers.open_ledger(writer.ledger_id)  # recovery over TCP against the restarted bookie
    assert reader.info.state is LedgerState.CLOSED and reader.info.last_entry_id == 199
    assert await reader.read(0, 199) == entries
    with pytest.raises(NoSuchEntry):
        await reader.read(200, 200)
    proc.close()
    await client.close()
    await store.close()


@pytest.mark.asyncio
async def test_bookies_register_in_etcd_under_a_lease(tmp_path: Path) -> None:
    if not etcd_available():
        pytest.skip("etcd binary not found (make system-deps installs etcd-server)")
    with EtcdServer() as etcd:
        procs = [
            BookieProcess(tmp_path / f"r{i}", bookie_id=f"r{i}", metadata=etcd.url, cluster="reg",
                          extra_args=["--lease-ttl", "1"])
            for i in range(3)
        ]  # fmt: skip
        store = await EtcdMetadataStore.connect(etcd.url)
        ledgers = QuorumLedgerClient(store, Keys("reg"), {})
        watcher = BookieWatcher(store, Keys("reg"), ledgers)
        await watcher.start()
        try:
            for proc in procs:
                proc.start()
            async with asyncio.timeout(WAIT):
                await watcher.wait_for(3)
            assert {b: a.port for b, a in watcher.bookies.items()} == {p.bookie_id: p.port for p in procs}
            writer = await ledgers.create_ledger(3, 3, 2)  # placed on the registered bookies, over TCP
            assert await asyncio.wait_for(writer.append(b"registered"), WAIT) == 0

            assert procs[0].stop() == 0  # a clean stop revokes the lease: gone at once
            async with asyncio.timeout(WAIT):
                while "r0" in ledgers.live_bookies:
                    await asyncio.sleep(0.02)
            procs[1].kill9()  # a crash: gone once the 1 s lease expires
            async with asyncio.timeout(WAIT):
                while "r1" in ledgers.live_bookies:
                    await asyncio.sleep(0.05)
            assert ledgers.live_bookies == ("r2",)
            procs[1].start()  # back, on the same address
            async with asyncio.timeout(WAIT):
                await watcher.wait_for(2)
            assert sorted(ledgers.live_bookies) == ["r1", "r2"]
        finally:
            await watcher.stop()
            await store.close()
            for proc in procs:
                proc.close()


def _evict(path: Path) -> None:
    """Drop a file's pages from the page cache, so the next start reads it from the disk (cold)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _startup_line(proc: BookieProcess) -> str:
    lines = [line for line in proc.log_tail(400).splitlines() if " open in " in line]
    assert lines, proc.log_tail()
    return lines[-1].split("storage.bookie.bookie: ", 1)[-1]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_restart_with_a_2_gib_journal(tmp_path: Path) -> None:
    """Start-up time of a bookie process over a 2 GiB journal (files evicted from the page cache first): after
    a crash (the last periodic checkpoint plus the journal after it), after a clean stop (the checkpoint
    written at shutdown, nothing to replay) and by the full rescan fallback; every entry readable after each."""
    rng = random.Random(2)
    data_dir = tmp_path / "big"
    target = 2 * 1024**3
    ledgers: dict[int, list[int]] = {}  # ledger id → entry sizes
    written = 0
    started = time.monotonic()
    bookie = await Bookie.open(data_dir, bookie_id="big")
    while written < target:  # 64 ledgers written side by side, 1-16 KiB entries (about 250,000 entries)
        batch = []
        for _ in range(512):
            ledger_id = rng.randrange(1, 65)
            sizes = ledgers.setdefault(ledger_id, [])
            size = rng.randrange(1024, 16 * 1024)
            batch.append(bookie.add_entry(ledger_id, len(sizes), len(sizes) - 1, payload(ledger_id, len(sizes), size)))
            sizes.append(size)
            written += size
        await asyncio.gather(*batch)
    periodic = bookie.maintenance.last_checkpoint
    assert periodic is not None  # written in the background every 256 MiB of journal
    await bookie.crash()  # no checkpoint at the end: the next start replays what came after the last one
    entries = sum(len(s) for s in ledgers.values())
    journal_bytes = sum(p.stat().st_size for p in (data_dir / "journal").iterdir())
    took = time.monotonic() - started
    print(f"\nwrote {entries} entries, {journal_bytes / 1024**3:.2f} GiB of journal in {took:.1f}s")
    assert journal_bytes >= target

    async def verify(port: int) -> None:
        client = TcpBookieClient("big", "127.0.0.1", port)
        for ledger_id, sizes in sorted(ledgers.items()):
            pos = 0
            while pos < len(sizes):
                got = await client.read_range(ledger_id, pos, len(sizes) - 1)
                for entry in got:
                    assert entry.payload == payload(ledger_id, entry.entry_id, sizes[entry.entry_id])
                pos += len(got)
        await client.close()

    proc = BookieProcess(data_dir, bookie_id="big")
    results = {}
    for mode in ("after a crash", "after a clean stop", "full rescan"):
        if mode == "full rescan":
            checkpoint.remove(data_dir)
        for path in [*(data_dir / "journal").iterdir(), *data_dir.glob(checkpoint.FILE_NAME)]:
            _evict(path)
        seconds = proc.start(timeout=600)
        results[mode] = (seconds, _startup_line(proc))
        await verify(proc.port)
        assert proc.stop() == 0
    for mode, (seconds, line) in results.items():
        print(f"{mode}: process listening after {seconds:.2f}s; {line}")
    assert "from checkpoint" in results["after a crash"][1]
    assert "from checkpoint, 0 journal bytes replayed" in results["after a clean stop"][1]
    assert "full rescan" in results["full rescan"][1]


def test_command_line_errors_are_clear(tmp_path: Path) -> None:
    first = BookieProcess(tmp_path / "shared", bookie_id="one")
    first.start()
    try:
        second = BookieProcess(tmp_path / "shared", bookie_id="one")
        with pytest.raises(BookieProcessError, match="exited with 1"):
            second.start()
        assert "in use by another bookie" in second.log_tail()
        assert first.running
        bad = BookieProcess(tmp_path / "other", bookie_id="x", metadata="zookeeper://nowhere")
        with pytest.raises(BookieProcessError, match="exited with 2"):
            bad.start()
        assert "expected etcd://HOST:PORT or none" in bad.log_tail()
        wrong_id = BookieProcess(tmp_path / "shared2", bookie_id="a")
        wrong_id.start()
        wrong_id.stop()
        wrong_id.bookie_id = "b"
        with pytest.raises(BookieProcessError, match="exited with 1"):
            wrong_id.start()
        assert "belongs to bookie 'a'" in wrong_id.log_tail()
    finally:
        first.close()
