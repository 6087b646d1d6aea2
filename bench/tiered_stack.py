"""Plumbing of bench/replay.py: moto S3 + an embedded broker using it, a paced producer that hashes what it sends,
offload waits by ListOffsets (KIP-1005), and process/disk figures. Everything on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import obstore
import xxhash
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from obstore.store import S3Store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import EmbeddedBroker  # noqa: E402

from brokers.cli.client import KafkaClient  # noqa: E402
from brokers.group_admin import list_offsets  # noqa: E402
from tests.moto_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoServer  # noqa: E402

MB, MiB = 1e6, 1024 * 1024
BUCKET = "tidelog-bench"
LATEST, LATEST_TIERED, EARLIEST_LOCAL = -1, -5, -4
WAIT = 1800.0  # hang guard for each wait (produce, offload, replay); never a measured limit
JOURNAL_SLACK = 80 * MiB  # "emptied": about one 64 MiB journal file left (the one being written)


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of process ``pid`` so far (0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    """user+system CPU seconds of this process (all its threads: librdkafka's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    """The 1, 5 and 15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def disk_bytes(path: Path) -> int:
    """Bytes the filesystem holds for the files under ``path`` (allocated blocks, as ``du``)."""
    total = 0
    for f in path.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            st = f.stat()
            if f.is_file():
                total += st.st_blocks * 512
    return total


@dataclass
class Stack:
    """moto + one embedded broker using it as its object store; ``s3`` is a plain obstore store on the prefix."""

    moto: MotoServer
    broker: EmbeddedBroker
    data_dir: Path
    prefix: str
    s3: S3Store

    @property
    def moto_pid(self) -> int:
        """The moto server's process id (for its CPU seconds)."""
        return self.moto._proc.pid if self.moto._proc is not None else 0

    def objects(self) -> list[tuple[str, int]]:
        """(key, size) of every segment object under the prefix, in key order (= offset order per partition)."""
        found = [(str(m["path"]), int(m["size"])) for chunk in obstore.list(self.s3) for m in chunk]
        return sorted((k, s) for k, s in found if k.endswith(".seg"))

    def segment_gets(self) -> dict[int, int]:
        """HTTP status -> GETs of segment objects moto has logged so far (206: ranged, 200: whole object)."""
        log = self.moto._log
        counts: dict[int, int] = {}
        if log is None:
            return counts
        with log.open(errors="replace") as f:
            for line in f:
                if "GET /" in line and ".seg HTTP/" in line:  # (werkzeug colours 206 lines: no '"GET')
                    status = int(line.rsplit('"', 1)[1].split()[0])
                    counts[status] = counts.get(status, 0) + 1
        return counts

    def restart(self) -> None:
        """Stop the broker and start it again on the same data directory and port (cold caches)."""
        self.broker.stop()
        self.broker = EmbeddedBroker(self.data_dir, self.broker.configs, self.broker.port,
                                     self.broker.extra_args).start()  # fmt: skip


@contextlib.contextmanager
def stack(args: argparse.Namespace, work: Path) -> Iterator[Stack]:
    """moto with a bucket, and a broker under ``work`` storing segments in it with the configs from ``args``."""
    with MotoServer() as moto:
        moto.create_bucket(BUCKET)
        prefix = f"{args.mode}-{uuid.uuid4().hex[:8]}"
        configs = {"offload.enable": "true", "ledger.rollover.bytes": str(args.ledger_bytes),
                   "ledger.rollover.ms": str(args.ledger_ms), "num.partitions": str(args.partitions)}  # fmt: skip
        for item in args.broker_config:
            key, _, value = item.partition("=")
            configs[key] = value
        data_dir = work / "data"
        broker = EmbeddedBroker(data_dir, configs, extra_args=["--object-store", moto.s3_url(BUCKET, prefix)])
        s3 = S3Store(BUCKET, prefix=prefix, config={"endpoint": moto.endpoint, "region": REGION,
                     "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY},
                     client_options={"allow_http": True})  # fmt: skip
        s = Stack(moto, broker.start(), data_dir, prefix, s3)
        try:
            yield s
        finally:
            s.broker.stop()


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """CreateTopics through confluent-kafka's AdminClient, then until Metadata shows every partition."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(60)
    deadline = time.monotonic() + 60
    while len(admin.list_topics(topic, timeout=10).topics[topic].partitions) < partitions:
        if time.monotonic() > deadline:
            raise SystemExit(f"topic {topic} did not show {partitions} partitions")
        time.sleep(0.2)


@dataclass
class Produced:
    """What the producer got acknowledged, per partition: count, key+value bytes, xxh64 in produce order."""

    partitions: int
    sent: int = 0
    acked_bytes: int = 0
    failed: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    hashes: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = [0] * self.partitions
        self.hashes = [xxhash.xxh64() for _ in range(self.partitions)]


def produce(bootstrap: str, topic: str, out: Produced, args: argparse.Namespace, *, total: int,
            rate: float = 0.0, stop: threading.Event | None = None) -> None:  # fmt: skip
    """Produce key+value bytes up to ``total`` (or until ``stop``), paced at ``rate`` MB/s when > 0.

    The hash covers key+value of each record in produce order per partition; an idempotent producer keeps that
    order in the log, so the consumer's hash in offset order must match."""
    rng = random.Random(args.seed)
    lo, hi = args.min_value_bytes, args.max_value_bytes

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            out.failed.append(str(err))
        else:
            out.acked_bytes += len(msg.key()) + len(msg.value())

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 20,
                  "batch.size": 1_000_000, "compression.type": "none",
                  "queue.buffering.max.kbytes": 262_144})  # fmt: skip
    began = time.monotonic()
    i = 0
    while out.sent < total and not (stop is not None and stop.is_set()):
        if rate > 0:
            ahead = out.sent / (rate * MB) - (time.monotonic() - began)
            if ahead > 0:
                p.poll(min(ahead, 0.05))
                continue
        part = i % out.partitions
        key = i.to_bytes(8, "big")
        value = rng.randbytes(rng.randint(lo, hi))
        while True:
            try:
                p.produce(topic, value=value, key=key, partition=part, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        out.hashes[part].update(key)
        out.hashes[part].update(value)
        out.counts[part] += 1
        out.sent += len(key) + len(value)
        i += 1
        p.poll(0)
    if p.flush(WAIT) != 0:
        raise SystemExit("producer did not flush within the hang guard")
    if out.failed:
        raise SystemExit(f"{len(out.failed)} records failed: {out.failed[:3]}")


def tier_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int, int]]:
    """partition -> (latest tiered, earliest local, high watermark), by ListOffsets (KIP-1005 timestamps)."""

    async def ask() -> dict[int, tuple[int, int, int]]:
        async with KafkaClient(bootstrap) as client:
            got = [await list_offsets(client, {(topic, p): ts for p in range(partitions)})
                   for ts in (LATEST_TIERED, EARLIEST_LOCAL, LATEST)]  # fmt: skip
        return {p: (got[0][(topic, p)], got[1][(topic, p)], got[2][(topic, p)]) for p in range(partitions)}

    return asyncio.run(ask())


def all_offloaded(bootstrap: str, topic: str, partitions: int) -> bool:
    return all(t == hw - 1 and local == hw for t, local, hw in tier_offsets(bootstrap, topic, partitions).values())


def wait_offloaded(s: Stack, topic: str, partitions: int, produced: int) -> tuple[float, int, list[tuple[str, int]]]:
    """Until every record is in a segment, the bookie holds about one journal file and the objects hold at
    least the produced bytes. Returns (seconds waited, bookie bytes then, objects)."""
    began = time.monotonic()
    while True:
        bookie = disk_bytes(s.data_dir / "bookie")
        if bookie <= JOURNAL_SLACK and all_offloaded(s.broker.bootstrap, topic, partitions):
            objects = s.objects()
            if sum(size for _, size in objects) >= produced:
                return time.monotonic() - began, bookie, objects
        if time.monotonic() - began > WAIT:
            raise SystemExit(f"not all offloaded after {WAIT:.0f}s (bookie {bookie / MiB:.0f} MiB)")
        time.sleep(1.0)
