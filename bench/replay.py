"""Tiered storage through a real broker on moto S3: replay of an offloaded topic, and bookie vs object-store bytes.

Both modes start a moto S3 server (real HTTP on 127.0.0.1) and ``tidelog run --object-store s3://...`` with
offload on and small ledgers (``--ledger-bytes``), and produce with confluent-kafka (acks=all, idempotent, no
compression) records with an 8-byte key and a value of incompressible random bytes, 1-16 KiB uniformly.

``replay`` (default): produce ``--size-mib`` of values, wait until every record is in a segment object and the
bookie has deleted the ledgers (its directory back to about one journal file), restart the broker (cold block
cache), then in one run over the same objects:

1. raw obstore GET bandwidth: whole-object GETs with one plain ``S3Store`` in key order, one at a time (before
   and after the replay), then 2 and 4 at a time;
2. the replay: one confluent-kafka consumer, partitions *assigned* (no group), reads everything from offset 0;
   MB/s of key+value bytes and of bytes on the wire (librdkafka's rxbytes); count and xxh64 per partition must
   equal what was produced.

``growth``: produce at ``--rate-mbps`` for ``--duration`` s, sampling every ``--sample-s`` s the bytes on the
bookie (allocated bytes of the files under DATA/bookie, as ``du``), the bytes of segment objects in the store,
and the bytes produced (acknowledged key+value); then a drain until offload catches up. Writes a CSV and an
SVG chart (``--out``). MB = 10^6 bytes, MiB = 2^20.

    .venv/bin/python bench/replay.py                                    # 2 GiB replay (docs/benchmarks.md)
    .venv/bin/python bench/replay.py growth                             # 10 minutes at 4 MB/s, plot in docs/img
    .venv/bin/python bench/replay.py --size-mib 128                     # a quick look
    .venv/bin/python bench/replay.py growth --duration 30 --out /tmp/g  # a quick look
    .venv/bin/python bench/replay.py plot --csv docs/img/tiered-growth-4mbps.csv   # redraw its SVGs
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore
import xxhash
from common import machine, table
from confluent_kafka import Consumer, KafkaException, TopicPartition
from obstore.store import S3Store
from plot import line_chart
from tiered_stack import (
    JOURNAL_SLACK,
    MB,
    ROOT,
    WAIT,
    MiB,
    Produced,
    Stack,
    all_offloaded,
    create_topic,
    disk_bytes,
    load_average,
    proc_cpu,
    produce,
    self_cpu,
    stack,
    tier_offsets,
    wait_offloaded,
)


@dataclass
class Replay:
    """What the consumer read: seconds, key+value and wire bytes, count and xxh64 per partition, its CPU s."""

    seconds: float
    first_record_s: float
    payload: int
    wire: int
    counts: list[int]
    digests: list[int]
    client_cpu: float


def replay(bootstrap: str, topic: str, ends: list[int], args: argparse.Namespace) -> Replay:
    """One consumer, partitions assigned from offset 0 (no group), reads up to ``ends``; hashes key+value."""
    stats: list[dict[str, Any]] = []
    conf = {"bootstrap.servers": bootstrap, "group.id": f"replay-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "enable.partition.eof": False, "statistics.interval.ms": 1000,
            "stats_cb": lambda raw: stats.append(json.loads(raw))}  # fmt: skip
    for item in args.consumer_config:
        key, _, value = item.partition("=")
        conf[key] = value
    c = Consumer(conf)
    hashes = [xxhash.xxh64() for _ in ends]
    counts = [0] * len(ends)
    nxt = [0] * len(ends)
    payload = 0
    first = 0.0
    cpu0 = self_cpu()
    began = time.monotonic()
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(len(ends))])
        while nxt != ends:
            if time.monotonic() - began > WAIT:
                raise SystemExit(f"replay stuck at {nxt} of {ends}")
            for m in c.consume(1000, timeout=0.05):
                if m.error() is not None:
                    raise KafkaException(m.error())
                p, off, key, value = m.partition(), m.offset(), m.key(), m.value()
                if p is None or off is None or key is None or value is None:
                    raise SystemExit(f"a record without partition, offset, key or value: {p} {off}")
                if off >= ends[p]:
                    continue
                if off != nxt[p]:
                    raise SystemExit(f"partition {p}: offset {off} where {nxt[p]} was expected")
                hashes[p].update(key)
                hashes[p].update(value)
                payload += len(key) + len(value)
                counts[p] += 1
                nxt[p] = off + 1
                if not first:
                    first = time.monotonic() - began
        elapsed = time.monotonic() - began
        cpu = self_cpu() - cpu0
        seen = len(stats)
        settle = time.monotonic() + 3.0
        while len(stats) == seen and time.monotonic() < settle:  # one more statistics window: the last rxbytes
            c.poll(0.1)
    finally:
        c.close()
    wire = sum(int(b.get("rxbytes", 0)) for b in stats[-1]["brokers"].values()) if stats else 0
    return Replay(elapsed, first, payload, wire, counts, [h.intdigest() for h in hashes], cpu)


async def raw_get(s3: S3Store, objects: list[tuple[str, int]], in_flight: int) -> float:
    """Whole-object GETs, ``in_flight`` at once in key order, through one obstore S3Store: MB/s."""
    queue = list(objects)
    began = time.perf_counter()

    async def worker() -> int:
        got = 0
        while queue:
            key, size = queue.pop(0)
            buf = await (await obstore.get_async(s3, key)).bytes_async()
            if len(memoryview(buf)) != size:
                raise SystemExit(f"GET {key}: {len(memoryview(buf))} bytes, listed {size}")
            got += size
        return got

    total = sum(await asyncio.gather(*(worker() for _ in range(in_flight))))
    return total / MB / (time.perf_counter() - began)


def measured_raw(s: Stack, objects: list[tuple[str, int]], in_flight: int) -> tuple[float, float]:
    """(MB/s, moto CPU seconds) of one raw GET pass."""
    m0 = proc_cpu(s.moto_pid)
    mb_s = asyncio.run(raw_get(s.s3, objects, in_flight))
    return mb_s, proc_cpu(s.moto_pid) - m0


def run_replay(args: argparse.Namespace, work: Path) -> None:
    """Produce, wait for offload, restart, raw GETs around one consumer's replay; print the figures."""
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    with stack(args, work) as s:
        create_topic(s.broker.bootstrap, topic, args.partitions)
        out = Produced(args.partitions)
        print(f"producing {args.size_mib} MiB to {topic} ({args.partitions} partitions)... load {load_average()}")
        t0 = time.monotonic()
        produce(s.broker.bootstrap, topic, out, args, total=args.size_mib * MiB)
        produce_s = time.monotonic() - t0
        print(f"produced {out.sent / MB:.0f} MB in {produce_s:.1f}s; waiting for offload... load {load_average()}")
        waited, bookie, objects = wait_offloaded(s, topic, args.partitions, out.sent)
        object_bytes = sum(size for _, size in objects)
        print(f"offloaded {len(objects)} objects, {object_bytes / MB:.0f} MB, {waited:.1f}s after the last ack; "
              f"bookie {bookie / MiB:.1f} MiB; restarting the broker")  # fmt: skip
        s.restart()
        ends = [tier_offsets(s.broker.bootstrap, topic, args.partitions)[p][2] for p in range(args.partitions)]
        if ends != out.counts:
            raise SystemExit(f"high watermarks {ends}, produced {out.counts}")
        load_before, started = load_average(), time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        raw1, raw1_cpu = measured_raw(s, objects, 1)
        print(f"raw GET, 1 at a time: {raw1:.0f} MB/s; replaying... load {load_average()}")
        b0, m0, g0 = s.broker.cpu_seconds(), proc_cpu(s.moto_pid), s.segment_gets()
        r = replay(s.broker.bootstrap, topic, ends, args)
        broker_cpu, moto_cpu = s.broker.cpu_seconds() - b0, proc_cpu(s.moto_pid) - m0
        gets = {k: v - g0.get(k, 0) for k, v in s.segment_gets().items() if v != g0.get(k, 0)}
        rss = s.broker.peak_rss_mb()
        load_replay = load_average()
        if r.counts != out.counts or r.digests != [h.intdigest() for h in out.hashes]:
            raise SystemExit(f"replay read different records: counts {r.counts} vs {out.counts}")
        print(f"replay: {r.payload / MB / r.seconds:.0f} MB/s, bytes and count match; load {load_replay}")
        raw1b, _ = measured_raw(s, objects, 1)
        raw2, _ = measured_raw(s, objects, 2)
        raw4, raw4_cpu = measured_raw(s, objects, 4)
    replay_mb_s = r.payload / MB / r.seconds
    raw_seq = (raw1 + raw1b) / 2
    ratio = replay_mb_s / raw_seq
    records = sum(out.counts)
    rows = [
        ("machine", machine()),
        ("replay start (UTC), load average before / during replay", f"{started}, "
                                                            f"{load_before} / {load_replay}"),
        ("produced (key+value)", f"{out.sent / MB:.0f} MB, {records:,} records, {args.partitions} partition(s), "
                                 f"values {args.min_value_bytes}-{args.max_value_bytes} B random"),
        ("produce, then offloaded", f"{out.sent / MB / produce_s:.1f} MB/s for {produce_s:.0f} s; all in segments "
                                    f"{waited:.0f} s after the last ack, bookie then {bookie / MiB:.0f} MiB"),
        ("segment objects", f"{len(objects)}, {object_bytes / MB:.0f} MB"),
        ("replay, 1 consumer (assign) from 0", f"**{replay_mb_s:.0f} MB/s** key+value ({r.seconds:.1f} s, "
                                               f"first record after {r.first_record_s:.2f} s), "
                                               f"{r.wire / MB / r.seconds:.0f} MB/s on the wire "
                                               f"({r.wire / r.payload:.3f}x)"),
        ("replay check", f"{records:,} records, xxh64 per partition equal to the produced"),
        ("raw GET, 1 at a time (before / after)", f"{raw1:.0f} / {raw1b:.0f} MB/s (mean {raw_seq:.0f})"),
        ("raw GET, 2 / 4 at a time", f"{raw2:.0f} / {raw4:.0f} MB/s"),
        ("replay / raw (sequential)", f"**{ratio:.2f}x** (target 0.5x: {'met' if ratio >= 0.5 else 'NOT met'}); "
                                      f"vs 4 at a time {replay_mb_s / raw4:.2f}x"),
        ("broker during replay", f"{broker_cpu:.1f} CPU s ({broker_cpu / r.seconds * 100:.0f}%), "
                                 f"peak RSS {rss:.0f} MiB since restart"),
        ("segment GETs by the broker during replay", ", ".join(f"{n} answered {k}" for k, n in sorted(gets.items()))
         + f" ({sum(gets.values()) / len(objects):.1f} per object)"),
        ("consumer process during replay", f"{r.client_cpu:.1f} CPU s ({r.client_cpu / r.seconds * 100:.0f}%)"),
        ("moto CPU s: replay / raw 1 at a time / raw 4 at a time", f"{moto_cpu:.1f} / {raw1_cpu:.1f} / {raw4_cpu:.1f}"),
    ]  # fmt: skip
    print(table(rows, "Replay of an offloaded topic from moto S3 (MB = 10^6 B)"))


def reached_at(samples: list[tuple[float, int, int, int, str]], target: int) -> float:
    """When the produced total first reached ``target`` bytes (linear between samples)."""
    prev_t, prev_p = 0.0, 0
    for t, _, _, p, _ in samples:
        if p >= target:
            return t if p == prev_p else prev_t + (t - prev_t) * (target - prev_p) / (p - prev_p)
        prev_t, prev_p = t, p
    return prev_t


def draw(csv_path: Path, ledger_bytes: int) -> list[Path]:
    """From a growth CSV: ``<stem>.svg`` (the three byte counts) and ``<stem>-bookie.svg`` (a close-up of the
    bookie's bytes and of the offload lag, produced minus in objects)."""
    with csv_path.open(newline="") as f:
        rows = [(float(r["seconds"]), int(r["bookie_bytes"]), int(r["object_bytes"]), int(r["produced_bytes"]),
                 r["phase"]) for r in csv.DictReader(f)]  # fmt: skip
    end = max(t for t, *_, ph in rows if ph == "produce")
    rate = max(p for t, _, _, p, _ in rows if t <= end) / MB / end
    what = f"{rate:.0f} MB/s for {end:.0f} s, ledgers of {ledger_bytes / MiB:g} MiB"
    marks = [(end, "producer stops")]
    main = {"bytes on the bookie": [(t, b / MiB) for t, b, _, _, _ in rows],
            "bytes in the object store": [(t, o / MiB) for t, _, o, _, _ in rows],
            "bytes produced (acked)": [(t, p / MiB) for t, _, _, p, _ in rows]}  # fmt: skip
    close = {"bytes on the bookie": main["bytes on the bookie"],
             "produced minus in objects": [(t, (p - o) / MiB) for t, _, o, p, _ in rows]}  # fmt: skip
    paths = [csv_path.with_name(csv_path.stem + ".svg"), csv_path.with_name(csv_path.stem + "-bookie.svg")]
    paths[0].write_text(line_chart(main, title=f"Bookie vs object store ({what})", x_label="seconds",
                                   y_label="MiB", marks=marks))  # fmt: skip
    paths[1].write_text(line_chart(close, title=f"Bytes on the bookie, offload lag ({what})", x_label="seconds",
                                   y_label="MiB", marks=marks))  # fmt: skip
    return paths


def run_growth(args: argparse.Namespace, work: Path) -> None:
    """Produce at a bounded rate, sampling bookie / object-store / produced bytes; CSV, SVGs and a summary."""
    topic = f"growth-{uuid.uuid4().hex[:8]}"
    args.out.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, int, int, int, str]] = []
    with stack(args, work) as s:
        create_topic(s.broker.bootstrap, topic, args.partitions)
        out = Produced(args.partitions)
        stop = threading.Event()
        producer = threading.Thread(target=produce, args=(s.broker.bootstrap, topic, out, args), daemon=True,
                                    kwargs={"total": 1 << 62, "rate": args.rate_mbps, "stop": stop})  # fmt: skip
        load_start, started = load_average(), time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        print(f"producing at {args.rate_mbps} MB/s for {args.duration}s to {topic}... load {load_start}")
        b0 = s.broker.cpu_seconds()
        began = time.monotonic()
        producer.start()
        phase = "produce"
        drained = False
        n = 0
        while True:
            t = time.monotonic() - began
            bookie, objects = disk_bytes(s.data_dir / "bookie"), sum(size for _, size in s.objects())
            samples.append((t, bookie, objects, out.acked_bytes, phase))
            if n % 12 == 0:
                print(f"{t:6.0f}s bookie {bookie / MiB:7.1f} MiB, objects {objects / MiB:7.1f} MiB, "
                      f"produced {out.acked_bytes / MiB:7.1f} MiB; load {load_average()}")  # fmt: skip
            n += 1
            if phase == "produce" and t >= args.duration:
                stop.set()
                producer.join(WAIT)
                if producer.is_alive():
                    raise SystemExit("producer did not stop")
                phase, produce_end, load_end = "drain", t, load_average()
            elif phase == "drain":
                drained = (
                    objects >= out.acked_bytes
                    and bookie <= JOURNAL_SLACK
                    and all_offloaded(s.broker.bootstrap, topic, args.partitions)
                )
                if drained or t - produce_end >= args.drain:
                    break
            time.sleep(max(0.0, began + n * args.sample_s - time.monotonic()))
        broker_cpu = s.broker.cpu_seconds() - b0
        rss = s.broker.peak_rss_mb()
    stem = f"tiered-growth-{args.rate_mbps:g}mbps"
    csv_path = args.out / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "bookie_bytes", "object_bytes", "produced_bytes", "phase"])
        w.writerows((f"{t:.1f}", b, o, p, ph) for t, b, o, p, ph in samples)
    svg_paths = draw(csv_path, args.ledger_bytes)
    produce_samples = [x for x in samples if x[4] == "produce"]
    lag_bytes = [p - o for _, _, o, p, _ in produce_samples]
    lag_s = [t - reached_at(samples, o) for t, _, o, _, _ in produce_samples]
    steady = [b for t, b, _, _, _ in produce_samples if t >= 60]
    rows = [
        ("machine", machine()),
        ("start (UTC), load average at start / at the producer's end",
         f"{started}, {load_start} / {load_end}"),
        ("produced (acknowledged key+value)", f"{out.acked_bytes / MiB:.0f} MiB in {produce_end:.0f} s "
                                              f"({out.acked_bytes / MB / produce_end:.2f} MB/s)"),
        ("bytes on the bookie: max / median after 60 s / final", f"{max(x[1] for x in samples) / MiB:.0f} / "
         f"{sorted(steady)[len(steady) // 2] / MiB if steady else float('nan'):.0f} / {samples[-1][1] / MiB:.0f} MiB"),
        ("bytes in the object store, final", f"{samples[-1][2] / MiB:.0f} MiB"),
        ("offload lag while producing (produced - objects)", f"max {max(lag_bytes) / MiB:.0f} MiB, "
         f"median {sorted(lag_bytes)[len(lag_bytes) // 2] / MiB:.0f} MiB; in time: max {max(lag_s):.0f} s, "
         f"median {sorted(lag_s)[len(lag_s) // 2]:.0f} s"),
        ("drain after the producer stopped", f"{samples[-1][0] - produce_end:.0f} s "
                                             f"({'caught up' if drained else 'NOT caught up'})"),
        ("broker", f"{broker_cpu:.0f} CPU s ({broker_cpu / samples[-1][0] * 100:.0f}%), peak RSS {rss:.0f} MiB"),
        ("files", ", ".join(str(x) for x in (csv_path, *svg_paths))),
    ]  # fmt: skip
    print(table(rows, "Bytes on the bookie vs in the object store while producing"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["replay", "growth", "plot"], default="replay",
                        help="plot: redraw the SVGs of a growth CSV (--csv)")  # fmt: skip
    parser.add_argument("--csv", type=Path, help="plot: the growth CSV")
    parser.add_argument("--size-mib", type=int, default=2048, help="replay: key+value bytes to produce")
    parser.add_argument("--duration", type=float, default=600.0, help="growth: seconds of producing")
    parser.add_argument("--rate-mbps", type=float, default=4.0, help="growth: producer rate, MB/s of key+value")
    parser.add_argument("--sample-s", type=float, default=5.0, help="growth: seconds between samples")
    parser.add_argument("--drain", type=float, default=180.0, help="growth: longest wait for offload to catch up")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--min-value-bytes", type=int, default=1024)
    parser.add_argument("--max-value-bytes", type=int, default=16 * 1024)
    parser.add_argument("--ledger-bytes", type=int, default=8 * MiB, help="ledger.rollover.bytes (segment size)")
    parser.add_argument("--ledger-ms", type=int, default=2000, help="ledger.rollover.ms (closes an idle tail)")
    parser.add_argument("--broker-config", action="append", default=[], metavar="K=V", help="more broker configs")
    parser.add_argument(
        "--consumer-config",
        action="append",
        default=[],
        metavar="K=V",
        help="replay: librdkafka consumer settings (default: librdkafka's own)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="growth: CSV and SVG directory")
    args = parser.parse_args()
    if args.mode == "plot":
        print("\n".join(str(x) for x in draw(args.csv, args.ledger_bytes)))
        return
    with tempfile.TemporaryDirectory(prefix="tidelog-replay-") as tmp:
        (run_replay if args.mode == "replay" else run_growth)(args, Path(tmp))


if __name__ == "__main__":
    main()
