"""Produce/consume benchmark for Tidelog with confluent-kafka (librdkafka).

Starts ``tidelog run`` itself on 127.0.0.1 with a temporary data directory (or uses --bootstrap), then:

1. full load: one producer, 1 KiB records, acks=all, linger/batch tuned for throughput, producing as
   fast as it can for --duration seconds (or --max-records): records/s, MB/s, and the per-message
   delivery latency (produce() call -> acknowledgement, librdkafka's ``Message.latency()``);
2. fixed rate: --rate-fraction (default 25%) of the measured full-load rate, once per
   --latency-linger-ms value (default 0 and 1), for --latency-duration seconds: delivery latency
   p50/p99/p99.9/max; optionally (--sweep) the same at other fixed rates;
3. consume: one consumer reads the most recent --tail-records per partition, then everything from
   offset 0: records/s and MB/s.

Besides client-side figures it reports the broker process's CPU (from /proc) and librdkafka's
request round-trip times, which separate time spent in the broker from time queued in the client.

MB = 10^6 bytes. Figures go to stdout as a table (and to --json PATH). Every loop is bounded in
time and count; the only network target is 127.0.0.1 (or the --bootstrap you pass).

    .venv/bin/python bench/produce_consume.py                 # the figures in docs/benchmarks.md
    .venv/bin/python bench/produce_consume.py --duration 5 --latency-duration 5   # a quick look
    .venv/bin/python bench/produce_consume.py --mock --phases full --duration 15  # full load, side by side

With ``--mock`` the same full-load phase also runs against librdkafka's mock cluster
(``--mock-script``, default /work/shared/tools/mockcluster.py, started as a subprocess) and the
table shows Tidelog's throughput as a fraction of the mock's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from array import array
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MOCK_SCRIPT, EmbeddedBroker, MockCluster, machine, percentile, table

MB = 1_000_000

def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)[topic].result(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        time.sleep(0.1)
    raise SystemExit(f"topic {topic} did not appear")


class Phase:
    def __init__(self) -> None:
        self.acked = 0
        self.errors = 0
        self.first_error = ""
        self.latencies = array("d")
        self.requests = 0
        self.rtt_windows: list[tuple[float, float]] = []  # (p50, p99) in ms per statistics window

    def on_stats(self, raw: str) -> None:
        """librdkafka statistics, once a second: the broker connection's request round trips (time
        from a request's send to its response, as seen on the socket) over the last window."""
        stats = json.loads(raw)
        for b in stats.get("brokers", {}).values():
            if b.get("nodeid", -1) < 0:
                continue  # the bootstrap connection
            self.requests = max(self.requests, int(b.get("tx", 0)))
            rtt = b.get("rtt", {})
            if rtt.get("cnt", 0) > 0:
                self.rtt_windows.append((rtt["p50"] / 1000, rtt["p99"] / 1000))

    def broker_side(self) -> dict[str, float]:
        if not self.rtt_windows:
            return {}
        p50s = sorted(w[0] for w in self.rtt_windows)
        return {
            "requests": self.requests,
            "rtt_p50_ms": p50s[len(p50s) // 2],  # median of the per-second p50s
            "rtt_p99_ms": max(w[1] for w in self.rtt_windows),  # worst per-second p99
        }

    def on_delivery(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            self.errors += 1
            self.first_error = self.first_error or str(err)
        else:
            self.acked += 1
            self.latencies.append(msg.latency())


def produce(
    bootstrap: str,
    topic: str,
    partitions: int,
    size: int,
    duration: float,
    max_records: int,
    rate: float | None,
    conf: dict[str, object],
    broker: EmbeddedBroker | MockCluster | None,
) -> dict[str, float]:
    ph = Phase()
    p = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "statistics.interval.ms": 1000, "stats_cb": ph.on_stats, **conf}
    )
    payload = os.urandom(size)
    # Warm up: connection, metadata, a first batch per partition (not measured).
    for i in range(partitions):
        p.produce(topic, payload, partition=i)
    p.flush(30)
    cpu0 = broker.cpu_seconds() if broker else 0.0
    client0 = time.process_time()
    n = 0
    start = time.perf_counter()
    if rate is None:
        while n < max_records:
            try:
                p.produce(topic, payload, partition=n % partitions, on_delivery=ph.on_delivery)
            except BufferError:
                p.poll(0.001)
                continue
            n += 1
            if n % 1000 == 0:
                p.poll(0)
                if time.perf_counter() - start > duration:
                    break
    else:
        while n < max_records:
            elapsed = time.perf_counter() - start
            if elapsed > duration:
                break
            due = min(int(rate * elapsed), max_records)
            while n < due:
                try:
                    p.produce(topic, payload, partition=n % partitions, on_delivery=ph.on_delivery)
                except BufferError:
                    p.poll(0.001)
                    continue
                n += 1
            # Serve delivery reports while waiting for the next record's due time. librdkafka's poll
            # timeout has millisecond resolution: shorter waits would busy-spin a core that the
            # broker needs on a small machine.
            wait = (n + 1) / rate - (time.perf_counter() - start)
            p.poll(min(max(wait, 0.001), 0.01))
    left = p.flush(120)
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - client0
    time.sleep(1.1)  # one more statistics report, covering the whole phase
    p.poll(0)
    cpu = (broker.cpu_seconds() - cpu0) if broker else float("nan")
    lat = sorted(ph.latencies)
    return {
        "records": ph.acked,
        "errors": ph.errors + left,
        "seconds": wall,
        "records_per_s": ph.acked / wall,
        "mb_per_s": ph.acked * size / wall / MB,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "p999_ms": percentile(lat, 99.9) * 1000,
        "max_ms": (lat[-1] * 1000) if lat else float("nan"),
        "broker_cpu_pct": 100 * cpu / wall,
        "client_cpu_pct": 100 * client_cpu / wall,
        "first_error": ph.first_error,  # type: ignore[dict-item]
        **ph.broker_side(),
    }


def consume(
    bootstrap: str,
    topic: str,
    partitions: int,
    limit_s: float,
    broker: EmbeddedBroker | None,
    tail_records: int | None = None,
) -> dict[str, float]:
    """Read to the end from offset 0, or (``tail_records``) from that many records before each end."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tidelog-bench-unused",  # required by the binding; no group is used (assign())
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": 512 * 1024,
        }
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = {tp.partition: c.get_watermark_offsets(tp, timeout=30)[1] for tp in tps}
    starts = {p: 0 if tail_records is None else max(0, end - tail_records) for p, end in ends.items()}
    total = sum(ends[p] - starts[p] for p in ends)
    c.assign([TopicPartition(topic, p, starts[p]) for p in range(partitions)])
    got = 0
    nbytes = 0
    cpu0 = broker.cpu_seconds() if broker else 0.0
    client0 = time.process_time()
    start = time.perf_counter()
    while got < total and time.perf_counter() - start < limit_s:
        for m in c.consume(10_000, timeout=1.0):
            if m.error() is None:
                got += 1
                nbytes += len(m.value())
            elif m.error().code() != KafkaError._PARTITION_EOF:
                raise SystemExit(f"consumer error: {m.error()}")
    wall = time.perf_counter() - start
    cpu = (broker.cpu_seconds() - cpu0) if broker else float("nan")
    client_cpu = time.process_time() - client0
    c.close()
    return {
        "records": got,
        "expected": total,
        "seconds": wall,
        "records_per_s": got / wall,
        "mb_per_s": nbytes / wall / MB,
        "broker_cpu_pct": 100 * cpu / wall,
        "client_cpu_pct": 100 * client_cpu / wall,
    }


def consume_only(bootstrap: str, topic: str, args: argparse.Namespace, broker: EmbeddedBroker | None) -> None:
    """Only the consume phases, ``args.repeat`` times, against a topic written before (a kept --data-dir)."""
    for n in range(args.repeat):
        for name, tail in ((f"last {args.tail_records:,}/partition", args.tail_records), ("from offset 0", None)):
            d = consume(bootstrap, topic, args.partitions, args.consume_limit, broker, tail)
            per_gb = d["broker_cpu_pct"] / 100 * d["seconds"] / max(d["mb_per_s"] * d["seconds"] / 1000, 1e-9)
            print(
                f"round {n + 1} consume {name}: {d['records_per_s']:,.0f} rec/s, {d['mb_per_s']:.1f} MB/s "
                f"({d['records']:,}/{d['expected']:,} records in {d['seconds']:.2f} s); broker CPU "
                f"{d['broker_cpu_pct']:.0f}% ({per_gb:.2f} CPU s/GB), client {d['client_cpu_pct']:.0f}%; "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one (127.0.0.1:PORT)")
    ap.add_argument("--data-dir", help="data dir for the started broker (default: a temp dir, removed after)")
    ap.add_argument("--broker-config", action="append", default=[], metavar="K=V", help="--config for tidelog run")
    ap.add_argument("--topic", default=None)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=20.0, help="full-load seconds (default 20)")
    ap.add_argument("--max-records", type=int, default=3_000_000, help="per produce phase")
    ap.add_argument("--linger-ms", type=int, default=5, help="full-load producer linger.ms")
    ap.add_argument("--batch-size", type=int, default=1_000_000, help="full-load producer batch.size (bytes)")
    ap.add_argument("--compression", default="none", help="full-load producer compression.type (default none)")
    ap.add_argument("--idle-seconds", type=float, default=5.0, help="idle pause after the full load")
    ap.add_argument("--rate-fraction", type=float, default=0.25)
    ap.add_argument("--rate", type=float, default=None, help="fixed-rate records/s (overrides --rate-fraction)")
    ap.add_argument("--latency-duration", type=float, default=20.0)
    ap.add_argument("--latency-linger-ms", default="0,1", help="fixed-rate producer linger.ms values (default 0,1)")
    ap.add_argument("--sweep", default="", metavar="R1,R2,...", help="more fixed rates (records/s) to measure")
    ap.add_argument("--sweep-duration", type=float, default=8.0)
    ap.add_argument("--tail-records", type=int, default=100_000, help="per partition, for the tail read")
    ap.add_argument("--consume-limit", type=float, default=120.0, help="max seconds for each consume phase")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--bookies", type=int, default=0, help="tidelog run --bookies N (default: the in-process bookie)")
    ap.add_argument("--phases", default="full,fixed,consume", help="which phases to run (default full,fixed,consume)")
    ap.add_argument("--mock", action="store_true", help="also run the full load against librdkafka's mock cluster")
    ap.add_argument(
        "--mock-script", type=Path, default=MOCK_SCRIPT, help=f"mock cluster script (default {MOCK_SCRIPT})"
    )
    ap.add_argument("--consume-only", action="store_true",
                    help="skip the produce phases: only read an existing --topic (repeat with --repeat)")
    ap.add_argument("--repeat", type=int, default=1, help="--consume-only: rounds of the two consume phases")
    args = ap.parse_args()
    if args.consume_only and not args.topic:
        ap.error("--consume-only needs --topic")
    phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    if "full" not in phases and not args.consume_only:
        raise SystemExit("--phases must include full (the fixed rates are fractions of it)")
    lingers = [int(x) for x in args.latency_linger_ms.split(",") if x.strip()]
    sweep_rates = [float(x) for x in args.sweep.split(",") if x.strip()]

    broker = None
    tmp = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        if args.data_dir:
            data_dir = Path(args.data_dir)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="tidelog-bench-")
            data_dir = Path(tmp.name) / "data"
        configs = dict(kv.split("=", 1) for kv in args.broker_config)
        extra = ["--bookies", str(args.bookies)] if args.bookies else []
        broker = EmbeddedBroker(data_dir, configs, extra_args=extra).start()
        bootstrap = broker.bootstrap

    def phase(rate: float | None, duration: float, conf: dict[str, object]) -> dict[str, float]:
        return produce(
            bootstrap, topic, args.partitions, args.record_size, duration, args.max_records, rate, conf, broker
        )

    def note(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    full_conf: dict[str, object] = {
        "linger.ms": args.linger_ms,
        "batch.size": args.batch_size,
        "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 256 * 1024,
        "compression.type": args.compression,
    }
    fixed: list[tuple[float, int, dict[str, float]]] = []  # (rate, linger.ms, figures)
    tail: dict[str, float] | None = None
    cons: dict[str, float] | None = None
    mock_full: dict[str, float] | None = None
    load_before = os.getloadavg()
    try:
        topic = args.topic or f"bench-{int(time.time())}"
        if args.consume_only:
            consume_only(bootstrap, topic, args, broker)
            return
        create_topic(bootstrap, topic, args.partitions)
        note(f"full load: {args.duration:.0f}s ...")
        full = phase(None, args.duration, full_conf)
        # Broker CPU with no client traffic right after the full load: background work (ledger
        # rollover, offload, compaction) that competes with the next phases.
        idle_cpu = float("nan")
        if broker:
            c0 = broker.cpu_seconds()
            time.sleep(args.idle_seconds)
            idle_cpu = 100 * (broker.cpu_seconds() - c0) / args.idle_seconds
        rate = args.rate or max(1.0, full["records_per_s"] * args.rate_fraction)
        if "fixed" not in phases:
            lingers, sweep_rates = [], []
        for linger in lingers:
            note(f"fixed rate {rate:,.0f} rec/s, linger.ms={linger}: {args.latency_duration:.0f}s ...")
            fixed.append((rate, linger, phase(rate, args.latency_duration, {"linger.ms": linger})))
        for r in sweep_rates:
            for linger in lingers:
                note(f"sweep {r:,.0f} rec/s, linger.ms={linger}: {args.sweep_duration:.0f}s ...")
                fixed.append((r, linger, phase(r, args.sweep_duration, {"linger.ms": linger})))
        if "consume" in phases:
            note("consume ...")
            # The most recent records first (what a caught-up consumer reads), then everything from offset 0.
            tail = consume(bootstrap, topic, args.partitions, args.consume_limit, broker, args.tail_records)
            cons = consume(bootstrap, topic, args.partitions, args.consume_limit, broker)
        peak_rss = broker.peak_rss_mb() if broker else float("nan")
    finally:
        if broker:
            broker.stop()
        if tmp:
            tmp.cleanup()
    if args.mock:
        # After the broker has stopped, so the two never compete for the machine's cores.
        mock = MockCluster(args.mock_script, topic, args.partitions).start()
        try:
            note(f"full load against the mock cluster: {args.duration:.0f}s ...")
            mock_full = produce(
                mock.bootstrap,
                topic,
                args.partitions,
                args.record_size,
                args.duration,
                args.max_records,
                None,
                full_conf,
                mock,
            )
        finally:
            mock.stop()
    load_after = os.getloadavg()

    def lat(d: dict[str, float]) -> str:
        return (
            f"p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, p99.9 {d['p999_ms']:.2f} ms, max {d['max_ms']:.1f} ms"
        )

    def rtt(d: dict[str, float]) -> str:
        if "requests" not in d:
            return "n/a"
        return (
            f"p50 {d['rtt_p50_ms']:.2f} ms, worst 1-s p99 {d['rtt_p99_ms']:.2f} ms; {d['requests']:,.0f} requests, "
            f"~{d['records'] / max(d['requests'], 1):.0f} records/request"
        )

    def cpu(d: dict[str, float]) -> str:
        # CPU per MB moves far less with the neighbours' load than MB/s does on a shared machine.
        per_mb = 10 * d["broker_cpu_pct"] / max(d["mb_per_s"], 1e-9)
        return (
            f"broker {d['broker_cpu_pct']:.0f}% of one core ({per_mb:.2f} ms CPU per MB), "
            f"client {d['client_cpu_pct']:.0f}%"
        )

    where = "embedded broker (tidelog run)" if broker else bootstrap
    if broker and args.bookies:
        where = f"embedded broker (tidelog run --bookies {args.bookies})"
    rows = [
        ("machine", machine()),
        ("setup", f"{args.partitions} partitions, {args.record_size} B records, acks=all, no compression, {where}"),
        (
            "produce, full load",
            f"{full['records_per_s']:,.0f} rec/s, {full['mb_per_s']:.1f} MB/s ({full['records']:,} records in "
            f"{full['seconds']:.1f} s; linger.ms={args.linger_ms}, batch.size={args.batch_size})",
        ),
        ("  delivery latency", lat(full)),
        ("  request round trip", rtt(full)),
        ("  CPU", cpu(full)),
        ("  broker CPU idle after", f"{idle_cpu:.0f}% of one core over the next {args.idle_seconds:.0f} s"),
    ]
    for r, linger, d in fixed:
        rows += [
            (
                f"produce, {r:,.0f} rec/s, linger {linger}",
                f"{d['records_per_s']:,.0f} rec/s achieved ({d['mb_per_s']:.1f} MB/s)",
            ),
            ("  delivery latency", lat(d)),
            ("  request round trip", rtt(d)),
            ("  CPU", cpu(d)),
        ]
    if mock_full is not None:
        rows += [
            (
                "mock cluster, full load",
                f"{mock_full['records_per_s']:,.0f} rec/s, {mock_full['mb_per_s']:.1f} MB/s "
                f"({mock_full['records']:,} records in {mock_full['seconds']:.1f} s)",
            ),
            ("  CPU", cpu(mock_full).replace("broker", "mock")),
            ("  Tidelog / mock", f"{full['mb_per_s'] / max(mock_full['mb_per_s'], 1e-9):.2f}x"),
        ]
    consumed = (
        []
        if tail is None or cons is None
        else [(f"consume last {args.tail_records:,}/partition", tail), ("consume from offset 0", cons)]
    )
    for name, d in consumed:
        rows += [
            (
                name,
                f"{d['records_per_s']:,.0f} rec/s, {d['mb_per_s']:.1f} MB/s "
                f"({d['records']:,}/{d['expected']:,} records in {d['seconds']:.1f} s)",
            ),
            ("  CPU", cpu(d)),
        ]
    rows.append(("broker peak memory", f"{peak_rss:,.0f} MiB resident (VmHWM)"))
    rows.append(
        (
            "load average",
            f"{load_before[0]:.2f} {load_before[1]:.2f} before, {load_after[0]:.2f} {load_after[1]:.2f} after",
        )
    )
    errors = full["errors"] + sum(d["errors"] for _r, _l, d in fixed)
    if errors:
        first = full["first_error"] or next((d["first_error"] for _r, _l, d in fixed if d["first_error"]), "")
        rows.append(("delivery errors", f"{errors:.0f}, first: {first}"))
    print(table(rows, "Tidelog embedded broker: produce/consume (confluent-kafka)"))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "full_load": full,
                    "idle_after_full_cpu_pct": idle_cpu,
                    "fixed_rate": [{"rate": r, "linger_ms": linger, **d} for r, linger, d in fixed],
                    "consume_tail": tail,
                    "consume": cons,
                    "mock_full_load": mock_full,
                    "load_before": load_before,
                    "load_after": load_after,
                    "broker_peak_rss_mib": peak_rss,
                },
                indent=2,
            )
        )
    if errors or any(d["records"] < d["expected"] for d in (tail, cons) if d is not None):
        sys.exit(1)


if __name__ == "__main__":
    main()
