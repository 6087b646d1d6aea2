"""Embedded metadata store specifics: durability across reopen and kill -9, torn tails, snapshots,
lease expiry, bounded watch history. (The shared behaviour is in tests/contract/test_metadata_store.py.)
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from metadata import codec, embedded
from metadata.api import (
    Event,
    EventKind,
    LeaseExpired,
    MetadataError,
    Put,
    RevisionCompacted,
    StoreUnavailable,
)
from metadata.embedded import EmbeddedMetadataStore

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0


async def take(watch: embedded.EmbeddedWatch, n: int) -> list[Event]:
    return [await asyncio.wait_for(anext(watch), WAIT) for _ in range(n)]


async def dump(store: EmbeddedMetadataStore) -> list[tuple[str, bytes, int]]:
    return [(i.key, i.value, i.version) for i in await store.list("")]


@pytest.mark.asyncio
async def test_reopen_keeps_data_and_revisions(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path)
    await store.put("/k/a", b"1")
    vb = await store.put("/k/b", b"2")
    await store.commit([], [Put("/k/c", b"3")], ["/k/a"])
    before, revision = await dump(store), await store.revision()
    await store.close()

    store = await EmbeddedMetadataStore.open(tmp_path)
    assert await dump(store) == before
    assert await store.revision() == revision
    assert await store.put("/k/b", b"2'", expected_version=vb) == revision + 1  # versions carry on
    await store.close()


@pytest.mark.asyncio
async def test_a_second_store_cannot_open_the_same_directory(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path)
    with pytest.raises(MetadataError, match="in use"):
        await EmbeddedMetadataStore.open(tmp_path)
    await store.close()
    other = await EmbeddedMetadataStore.open(tmp_path)  # released by close
    await other.close()


@pytest.mark.parametrize("tail", ["garbage", "torn-record", "torn-header"])
@pytest.mark.asyncio
async def test_a_torn_or_garbage_tail_is_dropped(tmp_path: Path, tail: str) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path)
    for i in range(5):
        await store.put(f"/k/{i}", str(i).encode())
    before, revision = await dump(store), await store.revision()
    await store.close()

    record = codec.encode_record(codec.Record(revision + 1, (("/k/lost", b"x", None),), ()))
    junk = {
        "garbage": os.urandom(300),
        "torn-record": record[: len(record) - 3],  # a kill in the middle of the last append
        "torn-header": record[:5],
    }[tail]
    with open(tmp_path / "wal", "ab") as f:
        f.write(junk)

    store = await EmbeddedMetadataStore.open(tmp_path)
    assert await dump(store) == before
    assert await store.revision() == revision
    await store.put("/k/after", b"ok")  # lands after the cut-off tail, so it survives the next reopen
    await store.close()
    store = await EmbeddedMetadataStore.open(tmp_path)
    got = await store.get("/k/after")
    assert got is not None and got.version == revision + 1
    await store.close()


@pytest.mark.asyncio
async def test_damage_before_good_records_refuses_to_open(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path)
    for i in range(5):
        await store.put(f"/k/{i}", b"v" * 20)
    await store.close()
    wal = bytearray((tmp_path / "wal").read_bytes())
    wal[12] ^= 0xFF  # inside the first record's payload
    (tmp_path / "wal").write_bytes(bytes(wal))
    for _attempt in range(2):  # the failed open released the directory: the same error again, not "in use"
        with pytest.raises(codec.CorruptMetadata):
            await EmbeddedMetadataStore.open(tmp_path)


@pytest.mark.asyncio
async def test_leased_keys_are_gone_after_reopen(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path)
    lease = await store.lease(10)
    registered = await store.put("/brokers/1", b"leased", lease=lease.id)
    for p in range(200):  # more than fit in one commit: expiry is not bound by MAX_COMMIT_OPS
        await store.put(f"/owners/t/{p}", b"1", lease=lease.id)
    await store.put("/topics/t", b"durable")
    revision = await store.revision()
    await store.close()
    assert not lease.alive

    store = await EmbeddedMetadataStore.open(tmp_path)
    assert await store.get("/brokers/1") is None
    assert [i.key for i in await store.list("")] == ["/topics/t"]
    assert await store.revision() == revision + 1  # the expiry is a change of its own ...
    events = await take(store.watch("/brokers/", registered), 2)  # ... and watchers see it
    assert [(e.kind, e.revision) for e in events] == [(EventKind.PUT, registered), (EventKind.DELETE, revision + 1)]
    with pytest.raises(LeaseExpired):
        await store.put("/brokers/1", b"x", lease=lease.id)
    await store.close()


@pytest.mark.asyncio
async def test_snapshot_compaction_keeps_everything(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path, compact_bytes=2048)
    for i in range(300):
        await store.put(f"/k/{i % 40:03d}", f"value-{i}".encode())
        if i % 7 == 0:
            await store.delete(f"/k/{(i * 3) % 40:03d}")
    before, revision = await dump(store), await store.revision()
    assert (tmp_path / "snapshot").exists()
    assert (tmp_path / "wal").stat().st_size <= 2048 + 200  # the log was emptied into the snapshot
    await store.close()

    store = await EmbeddedMetadataStore.open(tmp_path)
    assert await dump(store) == before
    assert await store.revision() == revision
    with pytest.raises(RevisionCompacted) as info:
        await anext(store.watch("/k/", 1))  # history before the snapshot is gone after a restart
    assert info.value.oldest > 1
    await store.close()


@pytest.mark.asyncio
async def test_history_survives_reopen_back_to_the_snapshot(tmp_path: Path) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path)
    first = await store.put("/k/a", b"1")
    await store.delete("/k/a")
    await store.close()
    store = await EmbeddedMetadataStore.open(tmp_path)
    events = await take(store.watch("/k/", first), 2)
    assert [(e.kind, e.key) for e in events] == [(EventKind.PUT, "/k/a"), (EventKind.DELETE, "/k/a")]
    await store.close()


@pytest.mark.asyncio
async def test_expire_lease_deletes_keys_like_a_dead_holder() -> None:
    store = await EmbeddedMetadataStore.open(None)
    lease = await store.lease(30)
    for p in range(200):
        await store.put(f"/owners/t/{p:03d}", b"b1", lease=lease.id)
    watch = store.watch("/owners/")
    await store.expire_lease(lease.id)
    assert not lease.alive
    events = await take(watch, 200)
    assert {(e.kind, e.key) for e in events} == {(EventKind.DELETE, f"/owners/t/{p:03d}") for p in range(200)}
    assert len({e.revision for e in events}) == 1  # one change
    assert await store.list("/owners/") == []
    with pytest.raises(LeaseExpired):
        await store.put("/owners/t/0", b"b1", lease=lease.id)
    await store.expire_lease(lease.id)  # idempotent
    await lease.revoke()
    await store.close()


@pytest.mark.asyncio
async def test_watch_older_than_history_raises_revision_compacted() -> None:
    store = await EmbeddedMetadataStore.open(None, history_size=5)
    for i in range(10):
        await store.put(f"/k/{i}", b"x")
    with pytest.raises(RevisionCompacted) as info:
        await anext(store.watch("/k/", 2))
    assert (info.value.requested, info.value.oldest) == (2, 6)
    assert [e.key for e in await take(store.watch("/k/", 6), 5)] == [f"/k/{i}" for i in range(5, 10)]
    await store.close()


@pytest.mark.asyncio
async def test_a_lagging_watch_catches_up_from_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "WATCH_BUFFER", 4)
    store = await EmbeddedMetadataStore.open(None, history_size=100)
    watch = store.watch("/k/")
    for i in range(30):
        await store.put(f"/k/{i:02d}", b"x")
    assert [e.key for e in await take(watch, 30)] == [f"/k/{i:02d}" for i in range(30)]

    slow = store.watch("/k/")
    for i in range(150):  # more than the history holds while nobody reads
        await store.put("/k/x", str(i).encode())
    with pytest.raises(RevisionCompacted):
        await take(slow, 150)
    await store.close()


@pytest.mark.asyncio
async def test_a_failed_log_write_applies_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path, reserve_bytes=0)  # no reserve to fall back on
    await store.put("/k/a", b"1")
    real_fdatasync = os.fdatasync
    calls = {"n": 0}

    def failing_fdatasync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(StoreUnavailable):
        await store.put("/k/b", b"2")
    assert await store.get("/k/b") is None
    v = await store.put("/k/c", b"3")  # the store carries on
    await store.close()
    store = await EmbeddedMetadataStore.open(tmp_path)
    assert [(i.key, i.version) for i in await store.list("/k/")] == [("/k/a", v - 1), ("/k/c", v)]
    await store.close()


@pytest.mark.asyncio
async def test_a_cancelled_write_still_completes_consistently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await EmbeddedMetadataStore.open(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real_append = codec.LogFile.append

    def slow_append(self: codec.LogFile, data: bytes) -> None:
        entered.set()
        release.wait(WAIT)
        real_append(self, data)

    monkeypatch.setattr(codec.LogFile, "append", slow_append)
    writer = asyncio.ensure_future(store.put("/k/a", b"1"))
    assert await asyncio.to_thread(entered.wait, WAIT)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    release.set()
    second = await store.put("/k/b", b"2")  # waits for the cancelled write, which still lands
    first = await store.get("/k/a")
    assert first is not None and first.version == second - 1
    await store.close()
    store = await EmbeddedMetadataStore.open(tmp_path)
    assert [(i.key, i.version) for i in await store.list("/k/")] == [("/k/a", second - 1), ("/k/b", second)]
    await store.close()


_WRITER = """
import asyncio, sys
from metadata.api import Put
from metadata.embedded import EmbeddedMetadataStore

async def main(path, start):
    store = await EmbeddedMetadataStore.open(path, compact_bytes=8192)
    lease = await store.lease(10)
    i = start
    while True:
        if i % 5 == 0:
            await store.commit([], [Put(f"/k/{i:06d}", b"v%d" % i), Put(f"/l/{i}", b"", lease=lease.id)])
        else:
            await store.put(f"/k/{i:06d}", b"v%d" % i)
        print(i, flush=True)
        i += 1

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _run_and_kill(path: Path, start: int, acks: int) -> list[int]:
    """Run a writer, SIGKILL it after ``acks`` acknowledged writes; returns every acknowledged index."""
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(start)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acked: list[int] = []
    try:
        while len(acked) < acks:
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.wait()}"
            acked.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    acked.extend(int(line) for line in child.stdout.read().split())  # printed before the kill
    child.stdout.close()
    return acked


@pytest.mark.asyncio
async def test_every_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    start = 0
    for _round in range(3):
        acked = await asyncio.to_thread(_run_and_kill, tmp_path, start, 250)
        store = await EmbeddedMetadataStore.open(tmp_path)
        for i in acked:
            got = await store.get(f"/k/{i:06d}")
            assert got is not None and got.value == b"v%d" % i, f"acknowledged write {i} lost"
        assert await store.list("/l/") == []  # the dead writer's lease expired with it
        start = max(acked) + 10
        await store.close()
    assert (tmp_path / "snapshot").exists()  # the kills also hit a store that had compacted


@pytest.mark.asyncio
async def test_a_full_disk_releases_the_reserve_so_the_write_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the log: the reserve file goes, the write is tried once more and commits (a delete on a
    full disk must get through); the reserve comes back on a later write once there is room."""
    monkeypatch.setattr(embedded, "RESERVE_PROBE_S", 0.0)
    store = await EmbeddedMetadataStore.open(tmp_path, reserve_bytes=64 * 1024)
    reserve = tmp_path / "reserve"
    assert reserve.stat().st_size == 64 * 1024
    await store.put("/k/a", b"1")
    real_fdatasync = os.fdatasync
    calls = {"n": 0}

    def full_once(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", full_once)
    assert await store.delete("/k/a")
    assert not reserve.exists() and store.disk_full
    assert "/k/a" not in [i.key for i in await store.list("/k/")]
    await store.put("/k/b", b"2")  # room again: the reserve is written back
    assert reserve.stat().st_size == 64 * 1024 and not store.disk_full
    await store.close()
    store = await EmbeddedMetadataStore.open(tmp_path)
    assert [i.key for i in await store.list("/k/")] == ["/k/b"]
    await store.close()
