"""Metadata store benchmark: the same operations on a local PostgreSQL and a local etcd (both real servers).

    .venv/bin/python bench/metadata_stores.py [--ops 1000] [--clients 4]

For each store: sequential puts from one client, puts from ``--clients`` clients at once (PostgreSQL
serialises every write on one row, etcd through raft), sequential gets, and put -> watch event latency
(p50 and max of 50). Both servers run on this machine with the tests' settings (tests/postgres_server.py:
fsync off; tests/etcd_server.py), so the figures compare the clients and the servers' write paths, not disks.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metadata.api import MetadataStore
from metadata.etcd import EtcdMetadataStore
from metadata.postgres import PostgresMetadataStore
from tests.etcd_server import EtcdServer
from tests.postgres_server import PostgresServer

WATCH_ROUNDS = 50


async def measure(name: str, connect: Callable[[], Awaitable[MetadataStore]], ops: int, clients: int) -> None:
    stores = [await connect() for _ in range(clients)]
    first = stores[0]
    try:
        started = time.perf_counter()
        for i in range(ops):
            await first.put(f"/bench/seq/{i}", b"x" * 100)
        sequential = ops / (time.perf_counter() - started)

        async def writer(store: MetadataStore, k: int) -> None:
            for i in range(ops // clients):
                await store.put(f"/bench/par/{k}/{i}", b"x" * 100)

        started = time.perf_counter()
        await asyncio.gather(*(writer(s, k) for k, s in enumerate(stores)))
        parallel = ops / (time.perf_counter() - started)

        started = time.perf_counter()
        for i in range(ops):
            await first.get(f"/bench/seq/{i}")
        gets = ops / (time.perf_counter() - started)

        watch = first.watch("/bench/watch/")
        latencies = []
        for i in range(WATCH_ROUNDS):
            started = time.perf_counter()
            await first.put(f"/bench/watch/{i}", b"x")
            await asyncio.wait_for(anext(watch), 10)
            latencies.append(time.perf_counter() - started)
        latencies.sort()
        print(
            f"{name:9} sequential puts {sequential:6.0f}/s | {clients} clients {parallel:6.0f}/s | "
            f"gets {gets:6.0f}/s | put -> watch p50 {latencies[len(latencies) // 2] * 1000:5.1f} ms "
            f"max {latencies[-1] * 1000:5.1f} ms",
            flush=True,
        )
    finally:
        for store in stores:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    with PostgresServer() as pg:
        asyncio.run(measure("postgres", lambda: PostgresMetadataStore.connect(pg.url), args.ops, args.clients))
    with EtcdServer() as etcd:
        asyncio.run(measure("etcd", lambda: EtcdMetadataStore.connect(etcd.url), args.ops, args.clients))
    print(f"load average after:  {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
