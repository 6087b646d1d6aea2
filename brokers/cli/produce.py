"""``tidelog produce TOPIC``: records from stdin (one per line), from ``--value``, or ``--count N --size B``
generated ones — kcat -P / kafka-console-producer for a quick test, over the Kafka protocol only.

Lines are sent as they arrive (a pipe that stays open keeps producing), batched while more are waiting.
Keyed records go where the Java client would put them (murmur2), unkeyed ones to one partition per batch
(the sticky partitioner's idea); ``-p`` pins a partition. The summary goes to stderr (stdout stays for
``--json``). Exit codes: 0 every record acknowledged, 1 an error, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from brokers.cli.client import ClientError, KafkaClient
from brokers.cli.common import CommandError, Progress, add_common, emit, fail
from brokers.cli.records import KV, Producer, batches_of, partition_for

PROG = "tidelog produce"
LINES_PER_BATCH = 10_000
BULK_RECORDS_PER_BATCH = 1_000
MAX_IN_FLIGHT = 4
MAX_BULK_SIZE = 64 * 1024 * 1024


def _natural(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return n


def _size(value: str) -> int:
    n = _natural(value)
    if n > MAX_BULK_SIZE:
        raise argparse.ArgumentTypeError(f"{value!r}: at most {MAX_BULK_SIZE} bytes per record")
    return n


def _acks(value: str) -> int:
    table = {"all": -1, "-1": -1, "1": 1}
    if value not in table:
        raise argparse.ArgumentTypeError(f"{value!r}: acks must be all (-1) or 1 (acks=0 gets no answer to check)")
    return table[value]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("produce", help="produce records from stdin, --value, or --count/--size (like kcat -P)")
    add_common(p, top=True)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--value", "-v", action="append", default=None, metavar="TEXT",
                   help="a record value (repeatable); without it, one record per line of stdin")
    p.add_argument("--key", "-k", default=None, metavar="KEY", help="the key of every record")
    p.add_argument("--key-separator", "-K", default=None, metavar="SEP",
                   help="stdin lines are KEY SEP VALUE (the first SEP splits), as kcat -K")
    p.add_argument("--partition", "-p", type=_natural, default=None, metavar="P", help="send everything to P")
    p.add_argument("--count", type=_natural, default=None, metavar="N", help="generate N records (bulk load)")
    p.add_argument("--size", type=_size, default=100, metavar="BYTES", help="value size with --count (default 100)")
    p.add_argument("--acks", type=_acks, default=-1, metavar="all|1", help="acknowledgement (default all)")
    p.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    sources = sum(x is not None for x in (args.value, args.count))
    if sources > 1:
        return fail(PROG, "give either --value or --count, not both", 2)
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return 130


class _Stats:
    """What was sent: records, value bytes, and the first and last offset per partition."""

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0
        self.offsets: dict[int, tuple[int, int]] = {}

    def add(self, partition: int, base: int, count: int, size: int) -> None:
        self.records += count
        self.bytes += size
        first, _ = self.offsets.get(partition, (base, base))
        self.offsets[partition] = (min(first, base), base + count - 1)


async def run_async(args: argparse.Namespace) -> int:
    try:
        async with KafkaClient(args.bootstrap, client_id="tidelog-produce", timeout=args.timeout) as client:
            return await _produce(client, args)
    except (ClientError, CommandError) as e:
        return fail(PROG, e)


async def _produce(client: KafkaClient, args: argparse.Namespace) -> int:
    producer = Producer(client, args.topic, args.acks)
    partitions = len(await producer.refresh())
    if args.partition is not None and args.partition >= partitions:
        raise CommandError(f"topic '{args.topic}' has no partition {args.partition} (it has {partitions})")
    stats = _Stats()
    started = time.monotonic()
    key = args.key.encode() if args.key is not None else None
    if args.count is not None:
        await _bulk(producer, args, key, partitions, stats)
    elif args.value is not None:
        await _send(producer, args, [(key, v.encode()) for v in args.value], partitions, stats)
    else:
        await _stdin(producer, args, key, partitions, stats)
    took = time.monotonic() - started
    data = {
        "topic": args.topic, "records": stats.records, "bytes": stats.bytes, "seconds": round(took, 3),
        "partitions": {str(p): {"first_offset": a, "last_offset": b} for p, (a, b) in sorted(stats.offsets.items())},
    }
    where = ", ".join(f"{p}: {a}-{b}" for p, (a, b) in sorted(stats.offsets.items())) or "-"
    rate = stats.records / took if took > 0 else 0.0
    text = (f"produced {stats.records} record(s), {stats.bytes} value bytes, to {args.topic} in {took:.2f} s "
            f"({rate:,.0f} records/s; offsets by partition {where})")
    if args.json:
        emit(args, data, "")
    else:
        print(text, file=sys.stderr)
    return 0


def _partition(args: argparse.Namespace, key: bytes | None, partitions: int, sticky: int) -> int:
    if args.partition is not None:
        return int(args.partition)
    if key is not None:
        return partition_for(key, partitions)
    return sticky


async def _send(
    producer: Producer, args: argparse.Namespace, records: list[KV], partitions: int, stats: _Stats
) -> None:
    """Group ``records`` by partition and send each group (pipelined, a few batches at a time)."""
    sticky = random.randrange(partitions)  # noqa: S311 - spreading load, not security
    by_partition: dict[int, list[KV]] = {}
    for k, v in records:
        by_partition.setdefault(_partition(args, k, partitions, sticky), []).append((k, v))
    limit = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(partition: int, batch_records: list[KV], batch: bytes) -> None:
        async with limit:
            base = await producer.send(partition, batch)
        stats.add(partition, base, len(batch_records), sum(len(v or b"") for _, v in batch_records))

    jobs = []
    for partition, recs in by_partition.items():
        # one batch per ~1 MiB; keep the records of each batch for the stats
        start = 0
        for batch in batches_of(recs):
            n = int.from_bytes(batch[57:61], "big")  # records count in the v2 header
            jobs.append(one(partition, recs[start : start + n], batch))
            start += n
    await asyncio.gather(*jobs)


def _generated(count: int, size: int) -> Iterator[bytes]:
    """Values for bulk produce: random printable text (base64 of random bytes, no newlines), so a consumer can
    print them and compression on the way cannot flatter the figures much."""
    block = base64.b64encode(os.urandom(max(size, 1) * 12))
    for i in range(count):
        at = (i * 7919) % (len(block) - size + 1)
        yield block[at : at + size]


async def _bulk(
    producer: Producer, args: argparse.Namespace, key: bytes | None, partitions: int, stats: _Stats
) -> None:
    progress = Progress(f"produce {args.topic}", args.count)
    values = _generated(args.count, args.size)
    sticky = random.randrange(partitions)  # noqa: S311 - spreading load, not security
    limit = asyncio.Semaphore(MAX_IN_FLIGHT)
    pending: set[asyncio.Task[None]] = set()
    per_batch = max(1, min(BULK_RECORDS_PER_BATCH, (1 << 20) // max(args.size, 1)))

    async def one(partition: int, records: list[KV]) -> None:
        try:
            base = await producer.send(partition, batches_of(records, 1 << 30)[0])
            stats.add(partition, base, len(records), args.size * len(records))
            progress.advance(len(records))
        finally:
            limit.release()

    sent = 0
    try:
        while sent < args.count:
            n = min(per_batch, args.count - sent)
            records: list[KV] = [(key, next(values)) for _ in range(n)]
            partition = _partition(args, key, partitions, sticky)
            sticky = (sticky + 1) % partitions
            await limit.acquire()
            task = asyncio.create_task(one(partition, records))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += n
            failed = [t for t in list(pending) if t.done() and t.exception() is not None]
            if failed:
                break
        await asyncio.gather(*pending)
    finally:
        for t in pending:
            t.cancel()
        progress.done()


async def _stdin(
    producer: Producer, args: argparse.Namespace, key: bytes | None, partitions: int, stats: _Stats
) -> None:
    """Lines of stdin as records, sent as they come: whatever has arrived goes in the next request."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=LINES_PER_BATCH * 4)

    def reader() -> None:
        stream = sys.stdin.buffer
        for line in iter(stream.readline, b""):
            asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()
        asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

    threading.Thread(target=reader, name="stdin", daemon=True).start()
    sep = args.key_separator.encode() if args.key_separator else None
    done = False
    while not done:
        lines = [await queue.get()]
        while not queue.empty() and len(lines) < LINES_PER_BATCH:
            lines.append(queue.get_nowait())
        if lines[-1] is None:
            done = True
        records: list[KV] = []
        for raw in lines:
            if raw is None:
                continue
            line = raw[:-1] if raw.endswith(b"\n") else raw
            line = line[:-1] if line.endswith(b"\r") else line
            if sep is not None and sep in line:
                k, _, v = line.partition(sep)
                records.append((k, v))
            else:
                records.append((key, line))
        if records:
            await _send(producer, args, records, partitions, stats)
