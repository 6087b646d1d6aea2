"""Offload from the owner's bytes against real components (moto S3 over HTTP, an in-process bookie with its
journal on disk, the quorum ledger client, the embedded metadata store): the segment built from the entries
the owner kept is byte-for-byte the one built from the bookies, the owner's run is cut at the closed
ledger's last entry id, and a broker without the bytes (a takeover) reads the bookies."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from metadata.models import LedgerRef
from storage.offload import OffloadConfig, Offloader
from storage.offload.build import BuildSpec, SegmentStream, bookie_entries, owner_entries
from storage.segment.catalog import list_segments
from storage.segment.format import SegmentWriter, verify_object
from tests.integration.offload_env import PARTITION, World, check_invariants, open_world, write_ledger
from tests.moto_server import MotoServer
from tests.segment_data import make_log

BUCKET = "tidelog-owner"
FAST = OffloadConfig(backoff_initial_s=0.05, backoff_max_s=0.5)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest_asyncio.fixture
async def world(tmp_path: Path, moto: MotoServer) -> AsyncIterator[World]:
    w = await open_world(tmp_path / "meta", tmp_path / "bookie", moto.s3_url(BUCKET, f"t-{uuid.uuid4().hex[:8]}"))
    yield w
    await w.close()


async def _from_bookies(world: World, ref: LedgerRef) -> bytes:
    """The segment the bookie path streams for ``ref`` (first in its partition: no producer state before)."""
    stream = SegmentStream(BuildSpec(ref, (), (), FAST.index_interval, 7), bookie_entries(world.ledgers, ref, 7))
    return b"".join([bytes(c) async for c in stream.chunks()])


def _one_buffer(ref: LedgerRef, entries: list[bytes]) -> bytes:
    writer = SegmentWriter(ref.first_offset, ref.ledger_id, index_interval=FAST.index_interval)
    for entry in entries:
        writer.append_entry(entry)
    return bytes(writer.finish())


@pytest.mark.asyncio
async def test_segment_from_owner_bytes_equals_the_bookie_one_and_is_streamed(world: World) -> None:
    topic = "o-" + uuid.uuid4().hex
    # about 12 MiB: more than the 8 MiB gathering bound, so it goes up as a multipart stream
    entries, batches = make_log(11, 120, batches_per_entry=(1, 2), records_per_batch=(4, 8),
                                value_size=(10_000, 14_000))  # fmt: skip
    ref = await write_ledger(world, topic, entries)
    from_bookies = await _from_bookies(world, ref)
    assert from_bookies == _one_buffer(ref, entries)

    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    for i, entry in enumerate(entries):  # what the partition log hands over as each entry is confirmed
        assert offloader.owner_bytes.add(topic, PARTITION, ref.ledger_id, i, bytearray(entry))
    offloader.attach(topic, PARTITION, world.access(topic))
    [record] = await offloader.offload_pending(topic, PARTITION)
    stats = offloader.stats()
    assert (stats.from_owner, stats.from_bookies) == (1, 0)
    assert offloader.owner_bytes.held == 0  # dropped once offloaded
    uploaded = await world.objects.get(record.object_key)
    assert len(uploaded) > 8 * 1024 * 1024
    assert uploaded == from_bookies
    assert verify_object(uploaded).checksum == record.checksum
    await check_invariants(world, topic, batches)


@pytest.mark.asyncio
async def test_owner_run_is_cut_at_the_ledgers_last_entry(world: World) -> None:
    topic = "c-" + uuid.uuid4().hex
    entries, batches = make_log(12, 30)
    ref = await write_ledger(world, topic, entries[:25])  # the ledger closed (recovered) at entry 24
    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    for i, entry in enumerate(entries):  # the owner holds 5 entries more: never acknowledged
        offloader.owner_bytes.add(topic, PARTITION, ref.ledger_id, i, entry)
    expected = await _from_bookies(world, ref)
    offloader.attach(topic, PARTITION, world.access(topic))
    [record] = await offloader.offload_pending(topic, PARTITION)
    assert offloader.stats().from_owner == 1
    assert await world.objects.get(record.object_key) == expected
    assert record.last_offset == ref.last_offset
    await check_invariants(world, topic, [b for b in batches if b.last_offset <= ref.last_offset])


@pytest.mark.asyncio
async def test_takeover_without_the_bytes_reads_the_bookies_and_builds_the_same_segment(world: World) -> None:
    topic = "k-" + uuid.uuid4().hex
    first, b1 = make_log(13, 40)
    second, b2 = make_log(14, 40, first_offset=b1[-1].last_offset + 1)
    ref1 = await write_ledger(world, topic, first)
    ref2 = await write_ledger(world, topic, second)
    owner_view = SegmentStream(BuildSpec(ref1, (), (), FAST.index_interval, 7), owner_entries(first))
    owner_built = b"".join([bytes(c) async for c in owner_view.chunks()])

    # the new owner kept nothing of ledger 1 and only entries 1.. of ledger 2 (it loaded mid-ledger): a hole
    taker = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    for i, entry in enumerate(second[1:], start=1):
        taker.owner_bytes.add(topic, PARTITION, ref2.ledger_id, i, entry)
    assert taker.owner_bytes.held == 0
    taker.attach(topic, PARTITION, world.access(topic))
    records = await taker.offload_pending(topic, PARTITION)
    assert [r.ledger_id for r in records] == [ref1.ledger_id, ref2.ledger_id]
    assert (taker.stats().from_owner, taker.stats().from_bookies) == (0, 2)
    assert await world.objects.get(records[0].object_key) == owner_built
    await check_invariants(world, topic, b1 + b2)
    assert [s.ledger_id for s in await list_segments(world.store, world.keys, topic, PARTITION)] == [
        ref1.ledger_id, ref2.ledger_id
    ]  # fmt: skip
