"""Fetch size limits as Kafka keeps them (KIP-74): whole batches, each partition within partition_max_bytes
and the response within max_bytes, except the first batch of the first partition that returns data — for
every Fetch version served, against a real Broker over in-memory ledgers; and the pure batch trimming."""

from __future__ import annotations

import datetime
import io
import struct
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kio.index import load_payload_module
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from brokers.broker import Broker
from brokers.codec import batch
from brokers.codec.batch_limits import split_batches, take_batches
from brokers.codec.chain import BufferChain, Chunks
from brokers.config import BrokerConfig
from brokers.handlers import fetch
from brokers.handlers.base import RequestContext, make
from metadata.embedded import EmbeddedMetadataStore
from storage.objectstore import MemoryObjectStore
from tests.memory_ledgers import MemoryLedgerClient
from tests.segment_data import make_batch

MAX_BYTES, PARTITION_MAX = 64 * 1024, 16 * 1024
BIG = 200 * 1024  # one batch larger than both limits


def _batch(base: int, records: int, value_size: int) -> bytes:
    return make_batch(base, records, 1_000 + base, value_size=value_size)


def _sizes(data: bytes | memoryview) -> list[tuple[int, int, int]]:
    """(base offset, last offset, size) of every batch in ``data``."""
    out = []
    for head in batch.iter_headers(data):
        out.append((head.base_offset, head.last_offset, head.size))
    return out


# --------------------------------------------------------------------------- take_batches / split_batches


def test_split_leaves_out_batches_below_the_offset_and_keeps_memory_shared() -> None:
    chunk = memoryview(_batch(0, 2, 10) + _batch(2, 3, 10) + _batch(5, 1, 10))
    assert [_sizes(b)[0][:2] for b in split_batches(chunk)] == [(0, 1), (2, 4), (5, 5)]
    got = list(split_batches(chunk, 3))
    assert [_sizes(b)[0][:2] for b in got] == [(2, 4), (5, 5)]
    assert all(b.obj is chunk.obj for b in got)  # views, not copies


def test_split_gives_unparsable_framing_back_as_one_piece() -> None:
    good = _batch(0, 1, 10)
    bad = struct.pack(">qi", 1, 2**30) + bytes(60)  # claims more bytes than there are
    pieces = list(split_batches(memoryview(good + bad)))
    assert [bytes(p) for p in pieces] == [good, bad]
    assert [bytes(p) for p in split_batches(memoryview(b"\x00" * 5))] == [b"\x00" * 5]


def test_take_batches_stays_within_the_limit_in_whole_batches() -> None:
    a, b, c = _batch(0, 1, 100), _batch(1, 1, 100), _batch(2, 1, 100)
    entry = memoryview(a + b)  # one stored entry holding two batches
    chunks = [entry, memoryview(c)]
    assert [bytes(x) for x in take_batches(chunks, 0, len(a) + len(b) + len(c), True)] == [a, b, c]
    assert [bytes(x) for x in take_batches(chunks, 0, len(a) + len(b), False)] == [a, b]
    assert [bytes(x) for x in take_batches(chunks, 0, len(a) + 1, False)] == [a]  # the entry is split
    assert [bytes(x) for x in take_batches(chunks, 1, 10_000, False)] == [b, c]  # batch a is below offset 1
    assert take_batches(chunks, 0, len(a) - 1, False) == []  # the first batch does not fit: nothing
    assert [bytes(x) for x in take_batches(chunks, 0, 1, True)] == [a]  # min_one: the first batch whole, only
    assert [bytes(x) for x in take_batches(chunks, 0, 0, True)] == [a]


# --------------------------------------------------------------------------- the Fetch handler, every version


@pytest_asyncio.fixture
async def loaded(tmp_path: Path) -> AsyncIterator[tuple[Broker, dict[int, list[tuple[int, int, int]]]]]:
    """A broker with topic "t": partition 0 small batches, a multi-batch entry, one BIG batch, more small
    ones; partition 1 small batches only; partition 2 a BIG batch first. Yields it and each partition's
    batches (base, last, size) in order."""
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(data_dir=str(tmp_path), port=0).with_overrides(["offload.enable=false"])
    broker = Broker(config, store, MemoryLedgerClient(), MemoryObjectStore())
    await broker.start()
    topic = await broker.topics.create("t", 3, 1, {"max.message.bytes": str(4 * BIG)})
    layout: dict[int, list[list[tuple[int, int]]]] = {  # entries of (records, value size) batches
        0: [[(5, 1000)]] * 6 + [[(3, 2000), (2, 3000), (4, 500)]] + [[(1, BIG)]] + [[(20, 200)]] * 8,
        1: [[(2, 3000)]] * 20,
        2: [[(1, BIG)], [(1, 100)], [(1, BIG)], [(3, 100)]],
    }
    expected: dict[int, list[tuple[int, int, int]]] = {}
    try:
        for partition, entries in layout.items():
            plog = await broker.logs.get(topic.topic_id, partition)
            offset = 0
            for entry in entries:
                data = b""
                for records, value_size in entry:
                    data += _batch(offset, records, value_size)
                    offset += records
                await (await plog.append(data, batch.validate(data)))
            expected[partition] = _sizes(b"".join(bytes(b) for b in (await plog.read(0, 1 << 30)).batches))
        yield broker, expected
    finally:
        await broker.stop()
        await store.close()


async def _fetch(broker: Broker, version: int, offsets: dict[int, int]) -> tuple[Any, int]:
    """One fetch of every partition of "t" from ``offsets``; the response and its encoded size."""
    m = load_payload_module(fetch.API_KEY, version, EntityType.request)
    topic = broker.topics.get("t")
    assert topic is not None
    parts = tuple(
        make(m.FetchPartition, partition=p, current_leader_epoch=-1, fetch_offset=o, log_start_offset=-1,
             partition_max_bytes=PARTITION_MAX)
        for p, o in offsets.items()
    )
    ref = {"topic_id": uuid.UUID(topic.topic_id)} if version >= 13 else {"topic": "t"}
    request = make(m.FetchRequest, replica_id=-1, max_wait=datetime.timedelta(0), min_bytes=1, max_bytes=MAX_BYTES,
                   isolation_level=0, session_id=0, session_epoch=-1, rack_id="",
                   topics=(m.FetchTopic(**ref, partitions=parts),), forgotten_topics_data=())
    ctx = RequestContext(broker, fetch.API_KEY, version, 7, "test", "127.0.0.1:1")
    response = await fetch.handle(ctx, request)
    chain = BufferChain()
    entity_writer(type(response))(chain, response)  # type: ignore[arg-type]
    raw = io.BytesIO()
    entity_writer(type(response))(raw, _joined(response))
    decoded, _ = entity_reader(type(response))(raw.getvalue(), 0)
    assert decoded == _joined(response)
    return decoded, chain.size


def _joined(response: Any) -> Any:
    """The response with its records joined to bytes (as a client decodes it)."""
    from dataclasses import replace

    topics = tuple(
        replace(t, partitions=tuple(
            replace(p, records=b"".join(bytes(x) for x in p.records.parts) if isinstance(p.records, Chunks)
                    else p.records)
            for p in t.partitions
        ))
        for t in response.responses
    )
    return replace(response, responses=topics)


@pytest.mark.asyncio
@pytest.mark.parametrize("version", range(fetch.MIN_VERSION, fetch.MAX_VERSION + 1))
async def test_every_fetch_version_keeps_the_limits_and_returns_everything(loaded: Any, version: int) -> None:
    broker, expected = loaded
    offsets = dict.fromkeys(expected, 0)
    got: dict[int, list[tuple[int, int, int]]] = {p: [] for p in expected}
    ends = {p: batches[-1][1] + 1 for p, batches in expected.items()}
    oversized_seen = 0
    for _round in range(200):  # bounded: ~40 rounds consume everything
        if all(offsets[p] >= ends[p] for p in offsets):
            break
        response, encoded = await _fetch(broker, version, {p: o for p, o in offsets.items() if o < ends[p]})
        first = True
        total = 0
        for part in response.responses[0].partitions:
            assert part.error_code == 0
            batches = _sizes(part.records) if part.records else []
            size = sum(s for _b, _l, s in batches)
            assert size == len(part.records or b"")  # whole batches only
            if batches and first and batches[0][2] > min(PARTITION_MAX, MAX_BYTES - total):
                assert len(batches) == 1, "after an oversized first batch nothing else of that partition"
                oversized_seen += 1
            else:
                assert size <= PARTITION_MAX
            if batches:
                first = False
            total += size
            got[part.partition_index].extend(batches)
            if batches:
                offsets[part.partition_index] = batches[-1][1] + 1
        oversized_alone = total > MAX_BYTES
        if oversized_alone:  # only the first batch of the first non-empty partition may take it past the limit
            assert sum(len(p.records or b"") > 0 for p in response.responses[0].partitions) == 1
        assert encoded <= max(total, MAX_BYTES) + 1024  # the frame is the records plus small headers
    assert got == expected
    assert oversized_seen == 3  # the three BIG batches, each sent whole, alone
