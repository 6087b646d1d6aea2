"""Bookie journal benchmark: group commit against the disk's raw write+fdatasync rate.

    .venv/bin/python bench/journal.py [--dir DIR] [--seconds 3] [--size 1024] [--concurrency 1,4,16,64,256]

Prints, measured in the same run on the same directory:
  1. raw disk: one write + one fdatasync per entry (the ceiling of a journal without group commit),
     and 1 MiB write + fdatasync throughput;
  2. Bookie.add_entry with N concurrent appenders of ``--size`` entries: entries/s, MB/s, fsyncs/s,
     entries per fsync, p50/p99 latency;
  3. the produce path below the broker: QuorumLedgerWriter.append of 1 MiB entries, pipelined, over one
     in-process bookie (E=Qw=Qa=1) and over three on the same disk (3/3/2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie.bookie import Bookie
from storage.bookie.protocol import BookieClient, LocalBookieClient
from storage.ledger.client import QuorumLedgerClient

MiB = 1024 * 1024


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def raw_disk(directory: Path, size: int, seconds: float) -> tuple[float, float]:
    """(write+fdatasync per second with ``size`` writes, MB/s with 1 MiB write+fdatasync)."""
    path = directory / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        buf = os.urandom(size)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, buf)
            os.fdatasync(fd)
            n += 1
        ops = n / (time.perf_counter() - start)
        big = os.urandom(MiB)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, big)
            os.fdatasync(fd)
            n += 1
        mbps = n * MiB / 1e6 / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return ops, mbps


async def bookie_appenders(directory: Path, concurrency: int, size: int, seconds: float) -> dict[str, float]:
    bookie = await Bookie.open(directory, bookie_id="bench")
    payload = os.urandom(size)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    before = bookie.journal.stats()

    async def appender(ledger_id: int) -> int:
        entry_id = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await bookie.add_entry(ledger_id, entry_id, entry_id - 1, payload)
            latencies.append(time.perf_counter() - t0)
            entry_id += 1
        return entry_id

    start = time.perf_counter()
    counts = await asyncio.gather(*(appender(n + 1) for n in range(concurrency)))
    elapsed = time.perf_counter() - start
    after = bookie.journal.stats()
    await bookie.close()
    entries = sum(counts)
    fsyncs = after.fsyncs - before.fsyncs
    return {
        "entries/s": entries / elapsed,
        "MB/s": entries * size / 1e6 / elapsed,
        "fsyncs/s": fsyncs / elapsed,
        "entries/fsync": entries / max(1, fsyncs),
        "p50 ms": pct(latencies, 50) * 1000,
        "p99 ms": pct(latencies, 99) * 1000,
    }


async def ledger_pipeline(
    directory: Path, bookies: int, quorum: tuple[int, int, int], window: int, size: int, seconds: float
) -> dict[str, float]:
    store = await EmbeddedMetadataStore.open(None)
    servers = [await Bookie.open(directory / f"b{i}", bookie_id=f"b{i}") for i in range(bookies)]
    transports: dict[str, BookieClient] = {b.bookie_id: LocalBookieClient(b) for b in servers}
    client = QuorumLedgerClient(store, Keys("bench"), transports)
    writer = await client.create_ledger(*quorum)
    payload = os.urandom(size)
    latencies: list[float] = []
    in_flight: deque[tuple[float, asyncio.Future[int]]] = deque()
    stop = time.perf_counter() + seconds
    start = time.perf_counter()
    appended = 0
    while time.perf_counter() < stop:
        while len(in_flight) < window:
            in_flight.append((time.perf_counter(), writer.append(payload)))
            appended += 1
        t0, fut = in_flight.popleft()
        await fut
        latencies.append(time.perf_counter() - t0)
    for t0, fut in in_flight:
        await fut
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    await writer.close()
    await client.close()
    for b in servers:
        await b.close()
    await store.close()
    return {
        "entries/s": appended / elapsed,
        "MB/s": appended * size / 1e6 / elapsed,
        "p50 ms": pct(latencies, 50) * 1000,
        "p99 ms": pct(latencies, 99) * 1000,
    }


def row(label: str, figures: dict[str, float]) -> str:
    return f"  {label:<28}" + "  ".join(f"{k} {v:>10,.1f}" for k, v in figures.items())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=1024, help="entry size for the group-commit runs")
    parser.add_argument("--concurrency", default="1,4,16,64,256")
    parser.add_argument("--big", type=int, default=MiB, help="entry size for the ledger pipeline runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="tidelog-bench-journal-") as tmp:
        root = Path(tmp)
        print(
            f"journal benchmark in {root} ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
            f"{type(asyncio.get_running_loop()).__module__} loop)"
        )
        ops, mbps = raw_disk(root, args.size, args.seconds)
        print("raw disk, one write + one fdatasync each:")
        print(f"  {args.size} B writes: {ops:,.0f} write+fdatasync/s ({ops * args.size / 1e6:,.1f} MB/s)")
        print(f"  1 MiB writes: {mbps:,.1f} MB/s")
        print(f"Bookie.add_entry, {args.size} B entries, N concurrent appenders (group commit):")
        for n in (int(x) for x in args.concurrency.split(",")):
            figures = await bookie_appenders(root / f"bookie-{n}", n, args.size, args.seconds)
            print(row(f"N={n}", figures))
        print(f"QuorumLedgerWriter.append, {args.big // 1024} KiB entries, pipelined:")
        for bookies, quorum, window in ((1, (1, 1, 1), 4), (1, (1, 1, 1), 16), (1, (1, 1, 1), 64), (3, (3, 3, 2), 16)):
            figures = await ledger_pipeline(
                root / f"ledger-{bookies}-{window}", bookies, quorum, window, args.big, args.seconds
            )
            label = f"{bookies} bookie(s) {'/'.join(map(str, quorum))} w={window}"
            print(row(label, figures))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
