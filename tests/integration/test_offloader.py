"""The offloader against real components: moto S3 over HTTP, an in-process bookie with its journal on disk,
the quorum ledger client and the embedded metadata store (file-backed).

Covered: offload and byte-exact read-back (from offset 0, the middle, by timestamp, from another "broker"),
idempotent retries, a crash after every step (in process), a damaged object from an earlier attempt, an
empty ledger, a ledger leaving the log mid-offload, orphan GC, retention by time, size and DeleteRecords,
and the object store stopped (SIGSTOP) and resumed. kill -9 of a real offloader process (must-show 3) is in
test_offload_kill9.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from metadata.models import OffloadIntent, SegmentRecord
from storage.objectstore import open_object_store
from storage.offload import STEPS, OffloadConfig, Offloader, OffloadError, apply_retention, plan_retention
from storage.segment.cache import BlockCache
from storage.segment.catalog import PartitionSegments, list_segments
from storage.segment.format import SegmentWriter, object_key, partition_prefix, verify_object
from tests.integration.offload_env import (
    PARTITION,
    World,
    check_invariants,
    expected_from,
    open_world,
    read_range,
    write_ledger,
    write_ledgers,
)
from tests.moto_server import MotoServer
from tests.segment_data import Batch, make_log

BUCKET = "tidelog-offload"
WAIT = 60.0  # hang guard only
FAST = OffloadConfig(backoff_initial_s=0.05, backoff_max_s=0.5)


class Crash(Exception):
    """Raised by a step hook to stop an offload at that step, as a crash would."""


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def url(moto: MotoServer) -> str:
    return moto.s3_url(BUCKET, f"t-{uuid.uuid4().hex[:8]}")


@pytest_asyncio.fixture
async def world(tmp_path: Path, url: str) -> AsyncIterator[World]:
    w = await open_world(tmp_path / "meta", tmp_path / "bookie", url)
    yield w
    await w.close()


# --- offload and read back -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_offload_then_read_back_byte_exact_from_anywhere(world: World, url: str) -> None:
    topic = "t-" + uuid.uuid4().hex
    batches = await write_ledgers(world, topic, 3, seed=1, entries=60, value_size=(500, 4000))
    ledger_ids = [r.ledger_id for r in (await world.state(topic)).ledgers]
    assert all(world.bookie.entry_location(lid, 0) is not None for lid in ledger_ids)

    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    told: list[tuple[int, bool]] = []  # (segment ledger, was the ledger still on the bookie when told)
    offloader.attach(topic, PARTITION, world.access(topic),
                     lambda r: told.append((r.ledger_id, world.bookie.entry_location(r.ledger_id, 0) is not None)))
    records = await offloader.offload_pending(topic, PARTITION)
    assert [r.ledger_id for r in records] == ledger_ids
    assert told == [(lid, True) for lid in ledger_ids]
    assert offloader.backlog().ledgers == 0 and offloader.stats().segments == 3
    segments = await check_invariants(world, topic, batches)
    assert [s.object_key for s in segments] == [
        object_key("tidelog", topic, PARTITION, s.base_offset, s.ledger_id) for s in segments
    ]
    for s in segments:  # every object is a whole, valid segment
        assert verify_object(await world.objects.get(s.object_key)).checksum == s.checksum

    # from the middle, and by timestamp, through another "broker": its own store client and cache
    other = open_object_store(url)
    try:
        cat = await PartitionSegments.load(world.store, world.keys, topic, PARTITION, other, BlockCache(1 << 22))
        middle = batches[len(batches) // 2]
        got = await cat.read(middle.base_offset + (middle.last_offset - middle.base_offset) // 2, 10**9)
        assert b"".join(bytes(v) for v in got) == expected_from(batches, middle.base_offset)
        target_ts = batches[len(batches) // 3].max_timestamp
        found = await cat.find_timestamp(target_ts)
        assert found is not None and bytes(found) == next(b.data for b in batches if b.max_timestamp >= target_ts)
        await cat.close()
    finally:
        await other.close()


@pytest.mark.asyncio
async def test_retrying_an_offloaded_ledger_changes_nothing(world: World) -> None:
    topic = "t-" + uuid.uuid4().hex
    batches = await write_ledgers(world, topic, 2, seed=2)
    refs = (await world.state(topic)).ledgers
    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    first = await offloader.offload_pending(topic, PARTITION)
    revision = await world.store.revision()
    again = [await offloader.offload(topic, PARTITION, ref) for ref in refs]  # stale refs, as a late retry has
    assert again[1] == first[1]  # the last ref is kept (offloaded): its record comes back
    assert again[0] is None  # the first ref left the log: nothing to do
    assert await offloader.offload_pending(topic, PARTITION) == [first[1]]
    assert await world.store.revision() == revision, "a retry wrote metadata"
    await check_invariants(world, topic, batches)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.asyncio
async def test_a_crash_after_any_step_is_finished_by_the_next_attempt(world: World, step: str) -> None:
    topic = "t-" + uuid.uuid4().hex
    batches = await write_ledgers(world, topic, 2, seed=3)

    def crash_at(name: str) -> None:
        if name == step:
            raise Crash(name)

    crashing = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST, step_hook=crash_at)
    with pytest.raises(Crash):
        await crashing.offload_pending(topic, PARTITION)
    fresh = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    await fresh.offload_pending(topic, PARTITION)
    assert await fresh.collect_orphans(topic, PARTITION) == []
    assert fresh.stats().reuploads == 0
    await check_invariants(world, topic, batches)


@pytest.mark.asyncio
async def test_a_damaged_object_from_an_earlier_attempt_is_replaced(world: World) -> None:
    topic = "t-" + uuid.uuid4().hex
    batches = await write_ledgers(world, topic, 1, seed=4, entries=80)
    ref = (await world.state(topic)).ledgers[0]
    key = object_key("tidelog", topic, PARTITION, ref.first_offset, ref.ledger_id)
    intent_key = world.keys.offload_intent(topic, PARTITION, ref.ledger_id)
    # an earlier attempt recorded its intent and left a torn object (a store without atomic puts)
    await world.store.put(intent_key, OffloadIntent(ref.ledger_id, ref.first_offset, key).encode(), 0)
    full = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    same = SegmentWriter(ref.first_offset, ref.ledger_id)
    same.append_batches(b"".join(b.data for b in batches))
    probe = same.finish()
    await world.objects.put(key, bytes(probe[: len(probe) // 2]))
    records = await full.offload_pending(topic, PARTITION)
    assert full.stats().reuploads == 1
    assert verify_object(await world.objects.get(key)).checksum == records[0].checksum
    await check_invariants(world, topic, batches)


@pytest.mark.asyncio
async def test_an_empty_ledger_is_retired_without_a_segment(world: World) -> None:
    topic = "t-" + uuid.uuid4().hex
    batches = await write_ledgers(world, topic, 1, seed=10)
    empty = await write_ledger(world, topic, [], first_offset=batches[-1].last_offset + 1)
    batches += await write_ledgers(world, topic, 1, seed=11, first_offset=batches[-1].last_offset + 1)
    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    records = await offloader.offload_pending(topic, PARTITION)
    assert len(records) == 2 and records[1].base_offset == empty.first_offset
    assert await world.ledgers.ledger_info(empty.ledger_id) is None
    await check_invariants(world, topic, batches)
    # a late retry of the empty ledger (its ref gone) and a pass over the state change nothing
    revision = await world.store.revision()
    assert await offloader.offload(topic, PARTITION, empty) is None
    await offloader.offload_pending(topic, PARTITION)
    assert await world.store.revision() == revision


@pytest.mark.asyncio
async def test_a_ledger_that_does_not_match_its_ref_is_never_offloaded_or_deleted(world: World) -> None:
    topic = "t-" + uuid.uuid4().hex
    await write_ledgers(world, topic, 1, seed=12)
    ref = (await world.state(topic)).ledgers[0]
    wrong = replace(ref, last_offset=ref.last_offset + 5)  # the log believes in records the ledger lacks
    await world.access(topic).update(lambda s: s.with_ledgers((wrong,)))
    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    with pytest.raises(OffloadError, match="its ref says"):
        await offloader.offload_pending(topic, PARTITION)
    assert await list_segments(world.store, world.keys, topic, PARTITION) == []
    assert await world.objects.list(partition_prefix("tidelog", topic, PARTITION)) == []
    assert world.bookie.entry_location(ref.ledger_id, 0) is not None
    assert (await world.state(topic)).ledgers == (wrong,)


@pytest.mark.asyncio
async def test_a_ledger_that_leaves_the_log_mid_offload_leaves_nothing_behind(world: World) -> None:
    topic = "t-" + uuid.uuid4().hex
    await write_ledgers(world, topic, 2, seed=5)
    ref = (await world.state(topic)).ledgers[0]

    def drop_after_upload(name: str) -> None:
        if name == "uploaded":
            raise Crash(name)

    crashing = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST,
                         step_hook=drop_after_upload)  # fmt: skip
    with pytest.raises(Crash):
        await crashing.offload(topic, PARTITION, ref)
    key = object_key("tidelog", topic, PARTITION, ref.first_offset, ref.ledger_id)
    assert await world.objects.head(key) is not None
    # DeleteRecords moves the start past the ledger: the owner drops it from the log
    await world.access(topic).update(
        lambda s: replace(s, log_start_offset=ref.last_offset + 1, ledgers=s.ledgers[1:])
    )
    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    assert await offloader.offload(topic, PARTITION, ref) is None
    assert await world.objects.head(key) is None
    assert await world.store.list(world.keys.offload_intents_prefix(topic, PARTITION)) == []


@pytest.mark.asyncio
async def test_orphan_gc_removes_only_unreferenced_objects(world: World) -> None:
    topic = "t-" + uuid.uuid4().hex
    await write_ledgers(world, topic, 3, seed=6)
    refs = (await world.state(topic)).ledgers

    def stop_at_upload(name: str) -> None:
        if name == "uploaded":
            raise Crash(name)

    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    await offloader.offload(topic, PARTITION, refs[0])
    crashing = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST, step_hook=stop_at_upload)
    with pytest.raises(Crash):
        await crashing.offload(topic, PARTITION, refs[1])  # a live intent: its object must stay
    prefix = partition_prefix("tidelog", topic, PARTITION)
    live_key = object_key("tidelog", topic, PARTITION, refs[1].first_offset, refs[1].ledger_id)
    live_staging = f"{live_key}.upload-0a0b"  # a multipart upload of the live intent, not yet copied in
    stray = [f"{prefix}00000000000000999999-12345.seg", f"{prefix}junk"]
    for key in [*stray, live_staging]:
        await world.objects.put(key, b"left over")
    # a retention that crashed between its metadata commit and deleting the object
    seg0 = (await list_segments(world.store, world.keys, topic, PARTITION))[0]
    await world.store.delete(world.keys.segment(topic, PARTITION, seg0.base_offset))
    # a dead intent: its ledger (refs[0], offloaded and dropped) is no longer in the log
    dead_key = f"{prefix}00000000000000424242-{refs[0].ledger_id}.seg"
    dead_intent = OffloadIntent(refs[0].ledger_id, 424242, dead_key).encode()
    await world.store.put(world.keys.offload_intent(topic, PARTITION, refs[0].ledger_id), dead_intent, 0)
    await world.objects.put(dead_key, b"dead attempt")

    await world.objects.put(f"{dead_key}.upload-0c0d", b"dead attempt's staging")

    deleted = await offloader.collect_orphans(topic, PARTITION)
    assert sorted(deleted) == sorted([*stray, seg0.object_key, dead_key, f"{dead_key}.upload-0c0d"])
    remaining = {m.key for m in await world.objects.list(prefix)}
    assert remaining == {live_key, live_staging}
    intents = await world.store.list(world.keys.offload_intents_prefix(topic, PARTITION))
    assert [OffloadIntent.decode(v.value).ledger_id for v in intents] == [refs[1].ledger_id]
    assert await offloader.collect_orphans(topic, PARTITION) == []
    # and the interrupted offload still completes; then its staging leftover is an orphan like any other
    await offloader.offload_pending(topic, PARTITION)
    assert len(await list_segments(world.store, world.keys, topic, PARTITION)) == 2  # seg0's key was removed
    assert await offloader.collect_orphans(topic, PARTITION) == [live_staging]


@pytest.mark.asyncio
async def test_segments_over_the_multipart_threshold_go_up_in_parts(tmp_path: Path, moto: MotoServer) -> None:
    prefix_name = f"mp-{uuid.uuid4().hex[:8]}"
    url = moto.s3_url(BUCKET, prefix_name, multipart_threshold=str(5 * 1024 * 1024))
    world = await open_world(tmp_path / "meta", tmp_path / "bookie", url)
    try:
        topic = "t-" + uuid.uuid4().hex
        batches = await write_ledgers(world, topic, 2, seed=9, entries=150, value_size=(2000, 6000))
        offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
        records = await offloader.offload_pending(topic, PARTITION)
        assert len(records) == 2 and all(r.size >= 5 * 1024 * 1024 for r in records)
        segments = await check_invariants(world, topic, batches)  # everything reads back byte-exact
        for s in segments:
            head = moto.head_object(BUCKET, f"{prefix_name}/{s.object_key}")
            assert head is not None and "-" in head["etag"]  # completed as a multipart upload
        listed = [m.key for m in await world.objects.list(partition_prefix("tidelog", topic, PARTITION))]
        assert listed == [s.object_key for s in segments]  # staging objects deleted
    finally:
        await world.close()


# --- retention ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_retention_by_time_size_and_delete_records(world: World) -> None:
    topic = "t-" + uuid.uuid4().hex
    hour = 3_600_000
    batches: list[Batch] = []
    offset = 0
    for i in range(6):  # six ledgers, an hour apart
        ents, bs = make_log(70 + i, 30, first_offset=offset, start_ts=1_700_000_000_000 + i * hour)
        await write_ledger(world, topic, ents)
        batches.extend(bs)
        offset = bs[-1].last_offset + 1
    offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=FAST)
    segs = await offloader.offload_pending(topic, PARTITION)
    now = segs[-1].max_timestamp + 1000

    async def retain(**kw: int) -> list[SegmentRecord]:
        state = await world.state(topic)
        current = await list_segments(world.store, world.keys, topic, PARTITION)
        plan = plan_retention(current, log_start_offset=state.log_start_offset, now_ms=now, **kw)  # type: ignore[arg-type]
        result = await apply_retention(plan, keys=world.keys, objects=world.objects, access=world.access(topic),
                                       topic_id=topic, partition=PARTITION)  # fmt: skip
        assert result.objects_left == ()
        for r in result.removed:
            assert await world.objects.head(r.object_key) is None
        assert (await world.state(topic)).log_start_offset == result.log_start_offset
        return list(result.removed)

    # time: segments whose newest record is older than 3.5 h: the first two (about 5 h and 4 h old)
    assert [r.ledger_id for r in await retain(retention_ms=int(3.5 * hour))] == [s.ledger_id for s in segs[:2]]
    assert (await world.state(topic)).log_start_offset == segs[1].last_offset + 1
    # size: keep at most three segments' worth
    limit = sum(s.data_length for s in segs[3:])
    assert [r.ledger_id for r in await retain(retention_bytes=limit)] == [segs[2].ledger_id]
    # DeleteRecords in the middle of segment 4: segment 3 goes, the start is exactly the offset asked
    middle = (segs[4].base_offset + segs[4].last_offset) // 2
    assert [r.ledger_id for r in await retain(delete_records_offset=middle)] == [segs[3].ledger_id]
    assert (await world.state(topic)).log_start_offset == middle
    assert await retain(delete_records_offset=middle) == []
    left = await check_invariants(world, topic, batches)
    assert [s.ledger_id for s in left] == [s.ledger_id for s in segs[4:]]
    assert await read_range(world, topic, middle) == expected_from(batches, middle)


# --- the object store stopped -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_offload_waits_out_a_stopped_store_and_catches_up(tmp_path: Path) -> None:
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        url = server.s3_url(BUCKET, "stopped", connect_timeout="300ms", request_timeout="1s", max_retries="0",
                            retry_timeout="1s")  # fmt: skip
        world = await open_world(tmp_path / "meta", tmp_path / "bookie", url)
        pid = server._proc.pid  # type: ignore[union-attr]  # the moto process, to stop and resume it
        try:
            topic = "t-" + uuid.uuid4().hex
            batches = await write_ledgers(world, topic, 2, seed=8)
            offloader = Offloader(world.store, world.keys, world.ledgers, world.objects,
                                  config=OffloadConfig(backoff_initial_s=0.1, backoff_max_s=1.0))  # fmt: skip
            os.kill(pid, signal.SIGSTOP)
            try:
                offloader.schedule(topic, PARTITION)
                deadline = time.monotonic() + WAIT
                while offloader.stats().retries < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                # the write path is not affected: another ledger lands on the bookie meanwhile
                batches += await write_ledgers(world, topic, 1, seed=9, first_offset=batches[-1].last_offset + 1)
                offloader.schedule(topic, PARTITION)
                backlog = offloader.backlog()
                assert offloader.stats().retries >= 2
                assert backlog.ledgers >= 2 and backlog.bytes > 0 and backlog.oldest_age_s > 0
                assert backlog.last_error is not None and "Unavailable" in backlog.last_error
                assert offloader.lag() >= backlog.oldest_age_s
                assert await list_segments(world.store, world.keys, topic, PARTITION) == []
            finally:
                os.kill(pid, signal.SIGCONT)
            await asyncio.wait_for(offloader.idle(), WAIT)
            assert offloader.backlog().ledgers == 0 and offloader.backlog().last_error is None
            await check_invariants(world, topic, batches)
            await offloader.close()
        finally:
            await world.close()
