"""A real offload world for integration tests: embedded metadata store (file), in-process bookie, quorum
ledger client, object store from a URL (moto S3 over HTTP in the tests), and a partition owner stand-in
that writes ledgers of real partition-log entries and records them in the partition state by CAS.

``write_ledgers``, ``read_range`` and ``check_invariants`` are the tests' shared steps and checks. Also the
child process of the kill -9 test::

    python -m tests.integration.offload_env --meta DIR --bookie DIR --url URL --topic T [--retain-below N]
        [--pause-after STEP]

runs the offloader over the partition (offload pending ledgers, optionally retention below an offset,
then orphan GC), printing ``step NAME`` for each step as it completes and ``done`` at the end. With
``--pause-after`` it stops right after that step, so a kill lands exactly there.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from metadata.models import LedgerRef, PartitionState, SegmentRecord
from storage import log_entry
from storage.bookie.bookie import Bookie
from storage.bookie.protocol import LocalBookieClient
from storage.ledger.api import NoSuchLedger
from storage.ledger.client import QuorumLedgerClient
from storage.objectstore import ObjectStore, open_object_store
from storage.offload import OffloadConfig, Offloader, StoreStateAccess, apply_retention, plan_retention
from storage.segment.cache import BlockCache
from storage.segment.catalog import PartitionSegments, list_segments
from storage.segment.format import partition_prefix
from tests.segment_data import Batch, make_log

PARTITION = 0


@dataclass
class World:
    store: EmbeddedMetadataStore
    keys: Keys
    bookie: Bookie
    ledgers: QuorumLedgerClient
    objects: ObjectStore

    def access(self, topic_id: str, partition: int = PARTITION) -> StoreStateAccess:
        return StoreStateAccess(self.store, self.keys, topic_id, partition)

    async def state(self, topic_id: str, partition: int = PARTITION) -> PartitionState:
        return await self.access(topic_id, partition).current()

    async def close(self) -> None:
        await self.ledgers.close()
        await self.bookie.close()
        await self.objects.close()
        await self.store.close()


async def open_world(meta_dir: Path, bookie_dir: Path, url: str, cluster: str = "tidelog") -> World:
    store = await EmbeddedMetadataStore.open(meta_dir)
    keys = Keys(cluster)
    bookie = await Bookie.open(bookie_dir, bookie_id="b1")
    ledgers = QuorumLedgerClient(store, keys, {"b1": LocalBookieClient(bookie)})
    return World(store, keys, bookie, ledgers, open_object_store(url))


async def write_ledger(
    world: World, topic_id: str, entries: list[bytes], partition: int = PARTITION, *, first_offset: int = -1
) -> LedgerRef:
    """Write ``entries`` to a new ledger as the partition owner would: ref added open, entries appended,
    ledger closed, ref closed with its last offset and max timestamp (each state change a CAS). With no
    entries the ledger is closed empty at ``first_offset``."""
    first = log_entry.decode_header(entries[0]).first_offset if entries else first_offset
    writer = await world.ledgers.create_ledger(1, 1, 1)
    access = world.access(topic_id, partition)
    ref = LedgerRef(writer.ledger_id, first)
    await access.update(lambda s: s.with_ledgers((*s.ledgers, ref)))
    await asyncio.gather(*(writer.append(e) for e in entries))
    await writer.close()
    heads = [log_entry.decode_header(e) for e in entries]
    closed = replace(ref, last_offset=heads[-1].last_offset if heads else first - 1,
                     max_timestamp=max((h.max_timestamp for h in heads), default=-1), closed=True)  # fmt: skip
    await access.update(
        lambda s: s.with_ledgers(tuple(closed if r.ledger_id == ref.ledger_id else r for r in s.ledgers))
    )
    return closed


async def write_ledgers(
    world: World, topic: str, count: int, *, seed: int, first_offset: int = 0, entries: int = 40, **kw: object
) -> list[Batch]:
    batches: list[Batch] = []
    offset = first_offset
    for i in range(count):
        ents, bs = make_log(seed + i, entries, first_offset=offset, **kw)  # type: ignore[arg-type]
        await write_ledger(world, topic, ents)
        batches.extend(bs)
        offset = bs[-1].last_offset + 1
    return batches


async def read_range(world: World, topic: str, start: int, max_bytes: int = 256 * 1024) -> bytes:
    """Everything from ``start`` to the end of the segments, as a consumer would fetch it (new cache)."""
    segments = await PartitionSegments.load(world.store, world.keys, topic, PARTITION, world.objects,
                                            BlockCache(32 * 1024 * 1024), block_size=128 * 1024)  # fmt: skip
    out = bytearray()
    offset = start
    end = segments.end_offset or start
    for _ in range(100_000):
        if offset >= end:
            break
        got = await segments.read(offset, max_bytes)
        assert got, f"nothing at offset {offset} below {end}"
        for view in got:
            out += view
        last = got[-1]
        offset = int.from_bytes(last[0:8], "big") + int.from_bytes(last[23:27], "big") + 1
    await segments.close()
    return bytes(out)


def expected_from(batches: list[Batch], start: int) -> bytes:
    return b"".join(b.data for b in batches if b.last_offset >= start)


async def check_invariants(world: World, topic: str, batches: list[Batch]) -> list[SegmentRecord]:
    """Everything closed is offloaded exactly once, nothing is left behind, and every byte reads back."""
    state = await world.state(topic)
    assert all(r.closed and r.offloaded for r in state.ledgers), state.ledgers
    assert len(state.ledgers) <= 1, "offloaded refs are dropped, except the last"
    segments = await list_segments(world.store, world.keys, topic, PARTITION)
    assert len({s.ledger_id for s in segments}) == len(segments), "a ledger listed twice"
    live = [s for s in segments if s.last_offset >= state.log_start_offset]
    for a, b in itertools.pairwise(live):
        assert b.base_offset == a.last_offset + 1, f"segments {a} and {b} overlap or leave a gap"
    assert await world.store.list(world.keys.offload_intents_prefix(topic, PARTITION)) == []
    listed = await world.objects.list(partition_prefix(world.keys.cluster, topic, PARTITION))
    assert sorted(m.key for m in listed) == sorted(s.object_key for s in segments)
    for s in segments:
        assert await world.ledgers.ledger_info(s.ledger_id) is None
        with pytest.raises(NoSuchLedger):
            await world.bookie.read_entry(s.ledger_id, 0)
    if batches:
        assert segments and segments[-1].last_offset == batches[-1].last_offset
        assert await read_range(world, topic, state.log_start_offset) == expected_from(batches, state.log_start_offset)
    return segments


async def _worker(args: argparse.Namespace) -> None:
    def step(name: str) -> None:
        sys.stdout.write(f"step {name}\n")
        sys.stdout.flush()
        if name == args.pause_after:
            time.sleep(60)  # hold still right after this step until the test kills the process

    world = await open_world(Path(args.meta), Path(args.bookie), args.url)
    try:
        config = OffloadConfig(backoff_initial_s=0.05, backoff_max_s=0.5)
        offloader = Offloader(world.store, world.keys, world.ledgers, world.objects, config=config, step_hook=step)
        await offloader.offload_pending(args.topic, PARTITION)
        if args.retain_below is not None:
            state = await world.state(args.topic)
            plan = plan_retention(
                await list_segments(world.store, world.keys, args.topic, PARTITION),
                log_start_offset=state.log_start_offset,
                now_ms=int(time.time() * 1000),
                delete_records_offset=args.retain_below,
            )
            await apply_retention(plan, keys=world.keys, objects=world.objects, access=world.access(args.topic),
                                  topic_id=args.topic, partition=PARTITION, step_hook=step)  # fmt: skip
            step("retention_done")
        await offloader.collect_orphans(args.topic, PARTITION)
        step("gc_done")
    finally:
        await world.close()
    sys.stdout.write("done\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meta", required=True)
    parser.add_argument("--bookie", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--retain-below", type=int, default=None)
    parser.add_argument("--pause-after", default=None, help="a step name: stop there (to be killed)")
    asyncio.run(_worker(parser.parse_args()))


if __name__ == "__main__":
    main()
