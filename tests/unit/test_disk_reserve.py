"""The reserve file released on a full disk (metadata/disk_reserve.py), and the local object store refusing
puts while a data directory on its file system refuses writes (issue 9, disk full)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metadata.disk_reserve import DiskReserve, refusing, report_refusing
from storage.objectstore.api import ObjectStoreUnavailable
from storage.objectstore.local import LocalObjectStore


def test_reserve_is_written_released_and_restored(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path / "reserve", 256 * 1024)
    reserve.ensure()
    assert reserve.held and (tmp_path / "reserve").stat().st_size == 256 * 1024
    assert reserve.release() and not reserve.held
    assert not reserve.release()  # nothing left to give
    assert not reserve.restore(margin=1 << 62)  # not enough room: nothing is written
    assert not (tmp_path / "reserve").exists()
    assert reserve.restore(margin=0) and reserve.held
    reserve.probe()  # a small write and fsync that leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reserve"]


def test_no_reserve_at_size_zero(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path / "reserve", 0)
    reserve.ensure()
    assert reserve.held and not reserve.release() and not (tmp_path / "reserve").exists()


@pytest.mark.asyncio
async def test_local_object_puts_wait_while_a_data_dir_on_the_same_disk_refuses_writes(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    journal = tmp_path / "journal"
    journal.mkdir()
    report_refusing(journal, "[Errno 28] No space left on device")
    try:
        with pytest.raises(ObjectStoreUnavailable, match="disk is full"):
            await store.put("a/b", b"data")
    finally:
        report_refusing(journal, None)
    assert str(journal) not in refusing()
    await store.put("a/b", b"data")
    assert await store.get("a/b") == b"data"
    await store.close()
