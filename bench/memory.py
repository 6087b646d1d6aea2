"""Broker memory benchmark: RSS over time during full-load produce and while idle after it.

Starts ``tidelog run`` (embedded, with ``--admin``) on 127.0.0.1 with a temporary data directory, then:

1. full load: one confluent-kafka producer, 1 KiB records, acks=all, as fast as it can for --duration s;
2. with --consume: one consumer reads everything from offset 0 (segments, then the tail), at most
   --consume-limit seconds;
3. idle: no traffic for --idle seconds (the idle trimmer should give freed heap back).

The broker's RSS (VmRSS from /proc) is sampled every --interval seconds throughout. At the end of the load
and at the end of the idle phase it reads ``/metrics``: ``tidelog_broker_memory_bytes{component}`` and the
sum of ``tidelog_partition_memory_bytes``. Prints a table of RSS over time, then peak and idle figures.

    .venv/bin/python bench/memory.py                            # the figures in docs/benchmarks.md
    .venv/bin/python bench/memory.py --duration 20 --idle 15    # a quick look

MB = 10^6 bytes, MiB = 2^20. Every loop is bounded; the only target is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EmbeddedBroker, free_port, machine, process_memory_mib, table
from produce_consume import create_topic

MB = 1_000_000
MIB = 1024 * 1024


def scrape(admin: str) -> tuple[dict[str, float], float, int]:
    """(component -> bytes, sum of per-partition bytes, partitions) from the broker's /metrics."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    components: dict[str, float] = {}
    total, parts = 0.0, 0
    for line in text.splitlines():
        if line.startswith("tidelog_broker_memory_bytes{"):
            name = line.split('component="', 1)[1].split('"', 1)[0]
            components[name] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tidelog_partition_memory_bytes{"):
            total += float(line.rsplit(" ", 1)[1])
            parts += 1
    return components, total, parts


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float, limit_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.limit = pid, interval, limit_s
        self.samples: list[tuple[float, float, str]] = []  # (seconds, RSS MiB, phase)
        self.phase = "load"
        self.stop_at = time.monotonic() + limit_s
        self._t0 = time.monotonic()

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            self.samples.append((time.monotonic() - self._t0, process_memory_mib(self.pid), self.phase))
            time.sleep(self.interval)


def produce(bootstrap: str, topic: str, partitions: int, size: int, duration: float) -> tuple[int, float]:
    p = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "batch.size": 1_000_000,
        "batch.num.messages": 100_000, "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 256 * 1024,
    })  # fmt: skip
    payload = os.urandom(size)
    n, start = 0, time.perf_counter()
    while n < 50_000_000:
        try:
            p.produce(topic, payload, partition=n % partitions)
        except BufferError:
            p.poll(0.001)
            continue
        n += 1
        if n % 1000 == 0:
            p.poll(0)
            if time.perf_counter() - start > duration:
                break
    p.flush(120)
    return n, time.perf_counter() - start


def consume(bootstrap: str, topic: str, partitions: int, records: int, limit_s: float) -> tuple[int, int, float]:
    """Read from offset 0 until ``records`` are read or ``limit_s`` passes: (records, bytes, seconds)."""
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"mem-{time.time_ns()}", "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 10_485_760,
    })  # fmt: skip
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    n = size = 0
    start = time.perf_counter()
    try:
        while n < records and time.perf_counter() - start < limit_s:
            for m in c.consume(10_000, 1.0):
                if m.error() is None:
                    n += 1
                    size += len(m.value() or b"")
    finally:
        c.close()
    return n, size, time.perf_counter() - start


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=60.0, help="full-load seconds")
    ap.add_argument("--idle", type=float, default=30.0, help="idle seconds after the load")
    ap.add_argument("--consume", action="store_true", help="read everything back from offset 0 after the load")
    ap.add_argument("--consume-limit", type=float, default=60.0, help="max seconds of the consume phase")
    ap.add_argument("--interval", type=float, default=0.5, help="RSS sampling interval")
    ap.add_argument("--broker-config", action="append", default=[], metavar="K=V", help="--config for tidelog run")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="tidelog-bench-mem-")
    admin = f"127.0.0.1:{free_port()}"
    configs = dict(kv.split("=", 1) for kv in args.broker_config)
    broker = EmbeddedBroker(Path(tmp.name) / "data", configs, extra_args=["--admin", admin]).start()
    assert broker.proc is not None
    pid = broker.proc.pid
    try:
        topic = f"mem-{int(time.time())}"
        create_topic(broker.bootstrap, topic, args.partitions)
        base_rss = process_memory_mib(pid)
        sampler = Sampler(pid, args.interval, args.duration + args.idle + args.consume_limit + 180)
        sampler.start()
        n, wall = produce(broker.bootstrap, topic, args.partitions, args.record_size, args.duration)
        load_components, load_parts, nparts = scrape(admin)
        load_rss = process_memory_mib(pid)
        read = None
        if args.consume:
            sampler.phase = "read"
            read = consume(broker.bootstrap, topic, args.partitions, n, args.consume_limit)
            read_components, _, _ = scrape(admin)
            read_rss = process_memory_mib(pid)
        sampler.phase = "idle"
        cpu0 = broker.cpu_seconds()
        time.sleep(args.idle)
        idle_cpu = 100 * (broker.cpu_seconds() - cpu0) / args.idle
        idle_components, idle_parts, _ = scrape(admin)
        idle_rss = process_memory_mib(pid)
        sampler.stop_at = 0.0
        sampler.join(5)
        peak = broker.peak_rss_mb()
    finally:
        broker.stop()
        tmp.cleanup()

    load_peak = max((s[1] for s in sampler.samples if s[2] == "load"), default=float("nan"))
    step = max(1, len(sampler.samples) // 24)
    print(table([(f"{t:6.1f} s {ph}", f"{r:7.1f} MiB") for t, r, ph in sampler.samples[::step]], "RSS over time"))
    print()
    rows = [
        ("load", f"{n:,} records of {args.record_size} B in {wall:.1f} s = {n * args.record_size / wall / MB:.1f} MB/s "
                 f"({n * args.record_size / MB:,.0f} MB), {args.partitions} partitions"),
        ("RSS before load", f"{base_rss:.1f} MiB"),
        ("RSS peak (VmHWM)", f"{peak:.1f} MiB (sampled during load: {load_peak:.1f} MiB)"),
        ("RSS end of load", f"{load_rss:.1f} MiB"),
        *([] if read is None else [
            ("read back", f"{read[0]:,} records, {read[1] / read[2] / MB:.1f} MB/s"),
            ("RSS end of read", f"{read_rss:.1f} MiB; fetch responses "
             f"{read_components.get('fetch_responses', 0) / MIB:.1f} MiB, tiered block cache "
             f"{read_components.get('tiered_block_cache', 0) / MIB:.1f} MiB"),
        ]),
        (f"RSS after {args.idle:.0f} s idle", f"{idle_rss:.1f} MiB (broker CPU while idle: {idle_cpu:.1f}% of a core)"),
        ("partition memory, end of load", f"{load_parts / MIB:.1f} MiB over {nparts} partitions"),
        ("partition memory, idle", f"{idle_parts / MIB:.1f} MiB"),
    ]
    rows += [
        (f"component {name}", f"load {fmt(load_components.get(name))}, idle {fmt(idle_components.get(name))}")
        for name in sorted(load_components.keys() | idle_components.keys())
    ]
    rows.append(("machine", machine()))
    rows.append(("load average (1, 5, 15 min)", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    print(table(rows, "Broker memory"))


if __name__ == "__main__":
    main()
