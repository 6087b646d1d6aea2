"""Produce benchmark of the replicated write-ahead tier: one broker and three bookie processes.

Starts ``tidelog run --bookies 3`` itself on 127.0.0.1 (a temporary data directory; ledgers E=3 Qw=3
Qa=2, so every entry is fsynced by two bookies before it is acknowledged), then with confluent-kafka:

1. full load: one producer, 1 KiB records round-robin over 3 partitions, acks=all, linger/batch tuned
   for throughput, as fast as it can for --duration seconds: MB/s and delivery latency p50/p99;
2. fixed rate: --rate-fraction (default 25%) of the measured full-load rate, once per
   --latency-linger-ms value, for --latency-duration seconds: delivery latency p50/p99/p99.9;
3. optionally (--sweep) other fixed rates with linger.ms=0.

Delivery latency is librdkafka's per-message ``Message.latency()`` (produce() call to acknowledgement).
Besides the client's view it reports CPU of the broker and of the three bookies (from /proc), and
librdkafka's request round trips. With --profile DIR the broker is sampled with py-spy during each phase
(speedscope JSON and a "top functions" summary in DIR). MB = 10^6 bytes. Only 127.0.0.1 is used.

    .venv/bin/python bench/bookies.py                                  # the figures in docs/benchmarks.md
    .venv/bin/python bench/bookies.py --duration 5 --latency-duration 5   # a quick look
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EmbeddedBroker, machine, table
from produce_consume import create_topic, produce


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ReplicatedBroker(EmbeddedBroker):
    """``tidelog run --bookies N`` as a subprocess; output in ``<data_dir>/../tidelog-bench.log``."""

    def __init__(self, data_dir: Path, bookies: int, configs: list[str]) -> None:
        pairs = dict(kv.split("=", 1) for kv in configs)
        super().__init__(data_dir, pairs, extra_args=["--bookies", str(bookies)])
        self.bookies = bookies

    def start(self, timeout: float = 120.0) -> ReplicatedBroker:
        super().start(timeout)
        return self

    def bookie_pids(self) -> list[int]:
        state = json.loads((self.data_dir / "bookies.json").read_text())
        return [int(b["pid"]) for b in state["bookies"]]

    def bookie_cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.bookie_pids())


class Profiler:
    """py-spy sampling the broker during a phase (optional)."""

    def __init__(self, out_dir: Path | None, pid: int, name: str) -> None:
        self.out_dir = out_dir
        self.pid = pid
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            py_spy = Path(sys.executable).parent / "py-spy"
            self.proc = subprocess.Popen(
                [str(py_spy), "record", "--pid", str(self.pid), "--rate", "200", "--format", "raw",
                 "--output", str(self.out_dir / f"{self.name}.folded"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            if self.out_dir is not None:
                summarize(self.out_dir / f"{self.name}.folded", self.out_dir / f"{self.name}.top.txt")


def summarize(folded: Path, out: Path, top: int = 40) -> None:
    """Self and inclusive sample shares per function from py-spy's folded stacks."""
    if not folded.exists():
        return
    self_count: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")]
        total += count
        self_count[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    lines = [f"{total} samples", "", "self%  function"]
    lines += [f"{100 * c / total:5.1f}  {f}" for f, c in self_count.most_common(top)]
    lines += ["", "incl%  function"]
    lines += [f"{100 * c / total:5.1f}  {f}" for f, c in incl.most_common(top)]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bookies", type=int, default=3)
    ap.add_argument("--broker-config", action="append", default=[], metavar="K=V", help="--config for tidelog run")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=20.0, help="full-load seconds (default 20)")
    ap.add_argument("--max-records", type=int, default=3_000_000, help="per produce phase")
    ap.add_argument("--linger-ms", type=int, default=5, help="full-load producer linger.ms")
    ap.add_argument("--batch-size", type=int, default=1_000_000, help="full-load producer batch.size (bytes)")
    ap.add_argument("--rate-fraction", type=float, default=0.25)
    ap.add_argument("--latency-duration", type=float, default=20.0)
    ap.add_argument("--latency-linger-ms", default="1,5", help="fixed-rate producer linger.ms values (default 1,5)")
    ap.add_argument("--sweep", default="", metavar="R1,R2,...", help="more fixed rates (records/s), linger 0")
    ap.add_argument("--sweep-duration", type=float, default=10.0)
    ap.add_argument("--profile", type=Path, default=None, help="py-spy the broker into this directory")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    lingers = [int(x) for x in args.latency_linger_ms.split(",") if x.strip()]

    with tempfile.TemporaryDirectory(prefix="tidelog-bench-bookies-") as tmp:
        broker = ReplicatedBroker(Path(tmp) / "data", args.bookies, args.broker_config).start()
        results: dict[str, dict[str, float]] = {}
        try:
            topic = f"bench-bookies-{os.getpid()}"
            create_topic(broker.bootstrap, topic, args.partitions)

            def phase(name: str, rate: float | None, conf: dict[str, object], duration: float) -> dict[str, float]:
                bookie0 = broker.bookie_cpu_seconds()
                start = time.perf_counter()
                with Profiler(args.profile, broker.proc.pid if broker.proc else 0, name):
                    figures = produce(
                        broker.bootstrap, topic, args.partitions, args.record_size, duration, args.max_records,
                        rate, conf, broker,  # type: ignore[arg-type]
                    )  # fmt: skip
                wall = time.perf_counter() - start
                figures["bookies_cpu_pct"] = 100 * (broker.bookie_cpu_seconds() - bookie0) / wall
                results[name] = figures
                return figures

            full = phase(
                "full-load", None, {"linger.ms": args.linger_ms, "batch.size": args.batch_size}, args.duration
            )
            rate = full["records_per_s"] * args.rate_fraction
            for linger in lingers:
                phase(f"25%-linger{linger}", rate, {"linger.ms": linger}, args.latency_duration)
            for fixed in [float(x) for x in args.sweep.split(",") if x.strip()]:
                phase(f"{fixed:.0f}rps-linger0", fixed, {"linger.ms": 0}, args.sweep_duration)
        finally:
            broker.stop()

    rows = [("machine", machine()), ("setup", f"1 broker + {args.bookies} bookie processes, E=3 Qw=3 Qa=2")]
    for name, r in results.items():
        rows.append(
            (
                name,
                f"{r['records_per_s']:,.0f} rec/s, {r['mb_per_s']:.1f} MB/s; latency p50 {r['p50_ms']:.2f} ms, "
                f"p99 {r['p99_ms']:.2f} ms, p99.9 {r['p999_ms']:.2f} ms, max {r['max_ms']:.1f} ms; "
                f"RTT p50 {r.get('rtt_p50_ms', float('nan')):.2f} / worst p99 {r.get('rtt_p99_ms', float('nan')):.1f} "
                f"ms; CPU broker {r['broker_cpu_pct']:.0f}% bookies {r['bookies_cpu_pct']:.0f}% "
                f"client {r['client_cpu_pct']:.0f}%; errors {r['errors']:.0f}",
            )
        )
    print(table(rows, "Tidelog replicated write-ahead tier: produce"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
