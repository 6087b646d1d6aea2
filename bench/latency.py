"""Produce latency over time and stalls, Tidelog beside librdkafka's mock cluster.

For each target (``embedded``: ``tidelog run``; ``bookies3``: ``tidelog run --bookies 3``; ``mock``: the mock
cluster of /work/shared/tools/mockcluster.py) one confluent-kafka producer (acks=all, 1 KiB records,
3 partitions) sends at a fixed rate for --duration seconds, once per --linger-ms value and per --fractions
value. The rate is a fraction of the target's full-load rate, measured first for --max-seconds (or --rate).
The mock cluster runs at the rates of the Tidelog target before it (same client, same rate).

Every delivery latency (librdkafka's ``Message.latency()``) is kept with its time. Per phase it prints
p50/p99/p99.9/max, the count of stalls (deliveries slower than --stall-ms, default 20) and the broker's
event-loop lag (its largest, and samples over 20 ms, from ``/metrics``) and garbage-collection pauses.
--svg writes per-second p50/p99/max of one phase (--plot-phase) as a chart (bench/plot.py).

    .venv/bin/python bench/latency.py                                   # 5-minute phases (the figures)
    .venv/bin/python bench/latency.py --duration 30 --targets embedded   # a quick look

Every loop is bounded; only 127.0.0.1 is a target.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from pathlib import Path

from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MOCK_SCRIPT, EmbeddedBroker, MockCluster, free_port, machine, percentile
from plot import line_chart
from produce_consume import create_topic

RECORD = 1024
SCRAPED = ("tidelog_event_loop_lag", "tidelog_event_loop_busy", "tidelog_gc_pause", "tidelog_ledger_rollover")
PARTITIONS = 3


class Scraper:
    """Reads the broker's /metrics once a second in a thread: loop-lag and GC figures."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if url:
            self._thread.start()

    def scrape(self) -> dict[str, float]:
        if not self.url:
            return {}
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:  # noqa: S310 - 127.0.0.1 only
                text = r.read().decode()
        except OSError:
            return {}
        # Only the few wanted lines are parsed: parsing all of /metrics in this (the producer's) process would
        # take the GIL from the producer loop long enough to distort its latencies.
        wanted = "\n".join(line for line in text.splitlines() if line.startswith(SCRAPED))
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(wanted):
            for s in family.samples:
                key = s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items()))
                out[key] = s.value
        return out

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            got = self.scrape()
            if got:
                self.samples.append((time.monotonic(), got))

    def stop(self) -> None:
        self._stop.set()
        if self.url:
            self._thread.join(5)

    def between(self, t0: float, t1: float, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Loop-lag max (the largest 5-s recent maximum seen in the phase), lag samples over 20 ms, GC."""
        if not before or not after:
            return {}
        def recent_max(name: str) -> float:
            seen = [m.get(name, 0.0) for t, m in self.samples if t0 + 6 <= t <= t1]
            return max([*seen, after.get(name, 0.0)])

        def diff(key: str) -> float:
            return after.get(key, 0.0) - before.get(key, 0.0)

        count = "tidelog_event_loop_lag_seconds_count"
        le20 = "tidelog_event_loop_lag_seconds_bucket,le=0.02"
        return {
            "lag_max_ms": 1000 * recent_max("tidelog_event_loop_lag_recent_max_seconds"),
            "busy_max_ms": 1000 * recent_max("tidelog_event_loop_busy_recent_max_seconds"),
            "lag_over_20ms": diff(count) - diff(le20),
            **{
                f"roll_{p}_{what}": diff(f"tidelog_ledger_rollover_seconds_{what},prepared={p}")
                for p in ("true", "false")
                for what in ("count", "sum")
            },
            "gc2": diff("tidelog_gc_pause_seconds_count,generation=2"),
            "gc_ms": 1000 * sum(diff(f"tidelog_gc_pause_seconds_sum,generation={g}") for g in range(3)),
            "gc_over_20ms": sum(
                diff(f"tidelog_gc_pause_seconds_count,generation={g}")
                - diff(f"tidelog_gc_pause_seconds_bucket,generation={g},le=0.025")
                for g in range(3)
            ),
        }


def full_load(bootstrap: str, topic: str, seconds: float) -> float:
    """Records/s at full load (the throughput settings of bench/produce_consume.py)."""
    p = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "batch.size": 1_000_000,
        "batch.num.messages": 100_000, "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 256 * 1024,
    })  # fmt: skip
    payload = os.urandom(RECORD)
    acked = [0]

    def done(err, _msg) -> None:  # type: ignore[no-untyped-def]
        if err is None:
            acked[0] += 1

    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            p.produce(topic, payload, partition=n % PARTITIONS, on_delivery=done)
            n += 1
        except BufferError:
            p.poll(0.001)
        if n % 1000 == 0:
            p.poll(0)
    p.flush(60)
    return acked[0] / (time.perf_counter() - start)


def fixed_rate(bootstrap: str, topic: str, rate: float, linger: int, seconds: float) -> dict[str, object]:
    """Produce at ``rate`` records/s for ``seconds``: every delivery's (time since start, latency)."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger})
    payload = os.urandom(RECORD)
    for i in range(PARTITIONS):  # warm up: connection, metadata, a first batch per partition
        p.produce(topic, payload, partition=i)
    p.flush(30)
    times, lats = array("d"), array("d")
    errors = [0]
    start = time.perf_counter()

    def done(err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            errors[0] += 1
        else:
            times.append(time.perf_counter() - start)
            lats.append(msg.latency())

    n = 0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed > seconds:
            break
        due = int(rate * elapsed)
        while n < due:
            try:
                p.produce(topic, payload, partition=n % PARTITIONS, on_delivery=done)
            except BufferError:
                p.poll(0.001)
                continue
            n += 1
        wait = (n + 1) / rate - (time.perf_counter() - start)
        p.poll(min(max(wait, 0.001), 0.01))  # ms resolution: shorter waits would busy-spin a core
    left = p.flush(60)
    return {"times": times, "lats": lats, "errors": errors[0] + left, "sent": n, "seconds": seconds}


def summarise(d: dict[str, object], stall_ms: float) -> dict[str, float]:
    lats = sorted(1000 * x for x in d["lats"])  # type: ignore[attr-defined]
    return {
        "acked": len(lats),
        "rate": len(lats) / float(d["seconds"]),  # type: ignore[arg-type]
        "p50": percentile(lats, 50),
        "p99": percentile(lats, 99),
        "p999": percentile(lats, 99.9),
        "max": lats[-1] if lats else float("nan"),
        "stalls": sum(1 for x in lats if x > stall_ms),
        "errors": float(d["errors"]),  # type: ignore[arg-type]
    }


def per_second(d: dict[str, object]) -> dict[str, list[tuple[float, float]]]:
    buckets: dict[int, list[float]] = {}
    for t, lat in zip(d["times"], d["lats"], strict=True):  # type: ignore[call-overload]
        buckets.setdefault(int(t), []).append(1000 * lat)
    out: dict[str, list[tuple[float, float]]] = {"p50": [], "p99": [], "max": []}
    for second in sorted(buckets):
        values = sorted(buckets[second])
        out["p50"].append((second, percentile(values, 50)))
        out["p99"].append((second, percentile(values, 99)))
        out["max"].append((second, values[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="embedded,mock,bookies3,mock", help="in order; mock reuses the rates before")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds per fixed-rate phase (default 300)")
    ap.add_argument("--fractions", default="0.25,0.5", help="fractions of the full-load rate")
    ap.add_argument("--linger-ms", default="0,1")
    ap.add_argument("--rate", type=float, default=None, help="records/s at fraction 1 (skips the full-load run)")
    ap.add_argument("--max-seconds", type=float, default=10.0, help="full-load measurement seconds")
    ap.add_argument("--stall-ms", type=float, default=20.0)
    ap.add_argument("--no-scrape", action="store_true", help="do not read the broker's /metrics (no loop-lag figures)")
    ap.add_argument("--broker-config", action="append", default=[], metavar="K=V")
    ap.add_argument("--svg", type=Path, default=None, help="write the per-second chart of --plot-phase here")
    ap.add_argument("--plot-phase", type=int, default=0, help="index of the phase to plot (default the first)")
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",") if x]
    lingers = [int(x) for x in args.linger_ms.split(",") if x]
    configs = dict(kv.split("=", 1) for kv in args.broker_config)
    print(f"machine: {machine()}; load before: {os.getloadavg()}", flush=True)
    results: list[tuple[str, dict[str, float], dict[str, object]]] = []
    full_rate = args.rate
    for target in args.targets.split(","):
        topic = f"lat-{target}-{int(time.time())}"
        with tempfile.TemporaryDirectory(prefix="tidelog-lat-") as tmp:
            broker = mock = None
            scraper = Scraper(None)
            if target == "mock":
                mock = MockCluster(MOCK_SCRIPT, topic, PARTITIONS).start()
                bootstrap = mock.bootstrap
            else:
                admin = free_port()
                extra = ["--admin", f"127.0.0.1:{admin}"] + (["--bookies", "3"] if target == "bookies3" else [])
                broker = EmbeddedBroker(Path(tmp) / "data", configs, extra_args=extra).start()
                bootstrap = broker.bootstrap
                create_topic(bootstrap, topic, PARTITIONS)
                scraper = Scraper(None if args.no_scrape else f"http://127.0.0.1:{admin}/metrics")
            try:
                if target != "mock" and args.rate is None:
                    full_rate = full_load(bootstrap, topic, args.max_seconds)
                    mb = full_rate * RECORD / 1e6
                    print(f"{target}: full load {full_rate:,.0f} rec/s ({mb:.1f} MB/s)", flush=True)
                assert full_rate is not None, "the first target must be a Tidelog one, or pass --rate"
                for fraction in fractions:
                    for linger in lingers:
                        time.sleep(6)  # the loop-lag window forgets the previous phase
                        rate = fraction * full_rate
                        before, t0 = scraper.scrape(), time.monotonic()
                        d = fixed_rate(bootstrap, topic, rate, linger, args.duration)
                        after, t1 = scraper.scrape(), time.monotonic()
                        s = summarise(d, args.stall_ms) | scraper.between(t0, t1, before, after)
                        s["load1"] = os.getloadavg()[0]
                        name = f"{target} {fraction:.0%} ({rate:,.0f} rec/s) linger {linger}"
                        results.append((name, s, d))
                        lag = (f"; loop lag max {s['lag_max_ms']:.1f} ms (busy {s.get('busy_max_ms', 0):.1f}), "
                               f"{s['lag_over_20ms']:.0f} samples > 20 ms; "
                               f"GC {s['gc_ms']:.0f} ms total, {s['gc2']:.0f} gen-2, {s['gc_over_20ms']:.0f} > 25 ms"
                               if "lag_max_ms" in s else "")  # fmt: skip
                        for p in ("true", "false"):
                            n = s.get(f"roll_{p}_count", 0.0)
                            if n:
                                lag += (f"; {n:.0f} rollovers prepared={p}, mean "
                                        f"{1000 * s[f'roll_{p}_sum'] / n:.1f} ms")  # fmt: skip
                        print(f"[{len(results) - 1}] {name}: p50 {s['p50']:.2f} p99 {s['p99']:.2f} "
                              f"p99.9 {s['p999']:.2f} max {s['max']:.1f} ms; {s['stalls']:.0f} stalls > "
                              f"{args.stall_ms:.0f} ms of {s['acked']:,.0f}; errors {s['errors']:.0f}{lag}; "
                              f"load1 {s['load1']:.2f}", flush=True)  # fmt: skip
            finally:
                scraper.stop()
                if broker:
                    broker.stop()
                if mock:
                    mock.stop()
    print(f"load after: {os.getloadavg()}")
    if args.svg and results:
        name, _s, d = results[args.plot_phase]
        series = {f"{k} (ms)": v for k, v in per_second(d).items()}
        args.svg.write_text(line_chart(series, title=f"Delivery latency per second: {name}",
                                       x_label="seconds", y_label="ms"))  # fmt: skip
        print(f"wrote {args.svg} ({name})")


if __name__ == "__main__":
    main()
