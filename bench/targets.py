"""Every issue-15 target measured in one run, side by side with librdkafka's mock cluster, as one table.

One command starts, one after the other on 127.0.0.1:

1. the mock cluster (/work/shared/tools/mockcluster.py, librdkafka's own in-memory broker; run, not copied);
2. ``tidelog run`` (embedded: in-process bookie, local object store, offload on), then again with
   ``offload.enable=false`` for the offload cost;
3. ``tidelog run --bookies 3`` (three bookie processes, ledgers 3/3/2, offload on);
4. ``bench/replay.py`` (a topic offloaded to moto S3, read back from segments by one consumer) as a subprocess;
5. bench/latency.py, bench/memory.py and bench/offload_cost.py as subprocesses when they exist (other helpers
   write them); otherwise the row says "not measured: bench/X.py missing".

On each of 1-3 the phases of bench/produce_consume.py run (its functions are imported): full load (one
confluent-kafka producer, 1 KiB records, acks=all, linger 5 ms, 1 MB batches) for --duration s; fixed rate at
25% of that setup's own full-load rate with linger.ms 0 and 1 for --latency-duration s (delivery latency p99);
on the embedded broker also 50% of full load, linger 1, for --stall-duration s (the longest delivery is the
worst stall); then one consumer reads the last --tail-records per partition (consume from the tail). Broker
RSS: peak (VmHWM) over the run and VmRSS after --idle s without traffic.

Prints the table target | figure | mock cluster | ratio | met?, with the command and the load average before,
between phases and after. Figures from a machine other processes share are noise: the load says how much.

    .venv/bin/python bench/targets.py                                   # short phases, about 6 minutes
    .venv/bin/python bench/targets.py --duration 30 --latency-duration 60 --stall-duration 300 --external-duration 300
    .venv/bin/python bench/targets.py --duration 3 --latency-duration 3 --stall-duration 3 --skip replay,external

MB = 10^6 bytes. Every loop is bounded; the only target is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import MOCK_SCRIPT, EmbeddedBroker, MockCluster, machine, process_memory_mib  # noqa: E402
from confluent_kafka import Consumer, KafkaError, TopicPartition  # noqa: E402
from produce_consume import create_topic, produce  # noqa: E402

PARTITIONS = 3
RECORD = 1024
TAIL_TODAY_MB_S = 250.0  # docs/benchmarks.md: tail consume 250-320 MB/s before issue 15
REPLAY_TODAY_MB_S = 512.0  # docs/benchmarks.md "Tiered storage: replay from the object store": 512 MB/s, 0.94x GET
FULL_LOAD_CONF: dict[str, object] = {
    "linger.ms": 5, "batch.size": 1_000_000, "batch.num.messages": 100_000,
    "queue.buffering.max.messages": 200_000, "queue.buffering.max.kbytes": 256 * 1024,
}  # fmt: skip
EXTERNAL = {
    # script: (what it measures, default arguments; {d} is --external-duration)
    "latency": ("produce p99/stalls over time, 25% and 50% load (SVG)", "--duration {d}"),
    "memory": ("broker RSS over time, per-partition memory", "--duration {d} --idle {d}"),
    "offload_cost": ("produce cost of offload", "--duration {d}"),
}


@dataclass(frozen=True)
class Row:
    target: str
    figure: str
    mock: str = "-"
    ratio: str = "-"
    met: str = "-"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}; load {loadavg()}", file=sys.stderr, flush=True)


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def consume_tail(bootstrap: str, topic: str, tail_records: int, limit_s: float = 60.0) -> dict[str, float]:
    """One consumer reads the last ``tail_records`` of each partition (from the low watermark if that is later:
    the mock cluster keeps only its most recent records); MB/s of values."""
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "tidelog-targets-unused", "enable.auto.commit": False,
        "enable.partition.eof": True, "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024, "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 512 * 1024,
    })  # fmt: skip
    try:
        marks = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in range(PARTITIONS)]
        starts = [max(low, high - tail_records) for low, high in marks]
        total = sum(high - start for (_low, high), start in zip(marks, starts, strict=True))
        c.assign([TopicPartition(topic, p, starts[p]) for p in range(PARTITIONS)])
        got = nbytes = 0
        at_end: set[int] = set()  # partitions that reported end of partition
        started = time.perf_counter()
        while got < total and len(at_end) < PARTITIONS and time.perf_counter() - started < limit_s:
            for m in c.consume(10_000, timeout=1.0):
                err = m.error()
                if err is None:
                    got += 1
                    nbytes += len(m.value() or b"")
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition() or 0)
                else:
                    raise RuntimeError(f"consumer error: {err}")
        wall = time.perf_counter() - started
    finally:
        c.close()
    return {"records": got, "expected": total, "seconds": wall, "mb_per_s": nbytes / wall / 1e6}


def phases(
    bootstrap: str, topic: str, broker: EmbeddedBroker | None, args: argparse.Namespace, stall: bool, name: str
) -> dict[str, Any]:
    """Full load, 25% with linger 0 and 1, (stall: 50% linger 1), tail consume; the figures by phase name."""

    def run(rate: float | None, seconds: float, conf: dict[str, object]) -> dict[str, float]:
        return produce(bootstrap, topic, PARTITIONS, RECORD, seconds, 10_000_000, rate, conf, broker)

    out: dict[str, Any] = {}
    note(f"{name}: full load {args.duration:.0f} s")
    out["full"] = run(None, args.duration, FULL_LOAD_CONF)
    rate = max(1.0, out["full"]["records_per_s"])
    for linger in (0, 1):
        note(f"{name}: 25% ({0.25 * rate:,.0f} rec/s), linger {linger}, {args.latency_duration:.0f} s")
        out[f"p25_l{linger}"] = run(0.25 * rate, args.latency_duration, {"linger.ms": linger})
    if stall:
        note(f"{name}: 50% ({0.5 * rate:,.0f} rec/s), linger 1, {args.stall_duration:.0f} s")
        out["p50_l1"] = run(0.5 * rate, args.stall_duration, {"linger.ms": 1})
    note(f"{name}: consume the last {args.tail_records:,} records per partition")
    out["tail"] = consume_tail(bootstrap, topic, args.tail_records)
    out["load"] = loadavg()
    return out


def mock_figures(args: argparse.Namespace) -> dict[str, Any]:
    topic = "targets"
    with MockCluster(MOCK_SCRIPT, topic, PARTITIONS) as mock:
        return phases(mock.bootstrap, topic, None, args, stall=False, name="mock cluster")


def tidelog_figures(
    args: argparse.Namespace, name: str, configs: dict[str, str], extra: list[str], full_only: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tidelog-targets-") as d:
        broker = EmbeddedBroker(Path(d) / "data", configs, extra_args=extra).start()
        try:
            topic = "targets"
            create_topic(broker.bootstrap, topic, PARTITIONS)
            if full_only:
                note(f"{name}: full load {args.duration:.0f} s")
                out: dict[str, Any] = {"full": produce(broker.bootstrap, topic, PARTITIONS, RECORD, args.duration,
                                                        10_000_000, None, FULL_LOAD_CONF, broker)}  # fmt: skip
            else:
                out = phases(broker.bootstrap, topic, broker, args, stall=name == "embedded", name=name)
            assert broker.proc is not None
            out["peak_rss_mib"] = broker.peak_rss_mb()
            if not full_only:
                note(f"{name}: idle {args.idle:.0f} s")
                time.sleep(args.idle)
                out["idle_rss_mib"] = process_memory_mib(broker.proc.pid)
            return out
        finally:
            broker.stop()


def replay_figures(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "bench" / "replay.py"), "replay", "--size-mib", str(args.replay_mib)]
    note(f"replay: {' '.join(cmd[1:])}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    text = done.stdout + done.stderr
    mb_s = re.search(r"replay: (\d+) MB/s", text)
    ratio = re.search(r"\*\*([\d.]+)x\*\* \(target", text)
    if done.returncode != 0 or mb_s is None:
        return {"error": f"exit {done.returncode}: {text.strip().splitlines()[-1:] or ['no output']}"}
    return {"mb_s": float(mb_s.group(1)), "ratio": float(ratio.group(1)) if ratio else float("nan")}


def external(name: str, args: argparse.Namespace) -> tuple[Row, str]:
    what, default_args = EXTERNAL[name]
    script = ROOT / "bench" / f"{name}.py"
    if not script.exists():
        return Row(what, f"not measured: bench/{name}.py missing"), ""
    extra = getattr(args, f"{name}_args") or default_args.format(d=f"{args.external_duration:g}")
    cmd = [sys.executable, str(script), *shlex.split(extra)]
    note(f"{name}: {' '.join(cmd[1:])}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.external_timeout, check=False)
    except subprocess.TimeoutExpired:
        return Row(what, f"bench/{name}.py did not finish in {args.external_timeout:.0f} s"), ""
    status = "ran" if done.returncode == 0 else f"exit {done.returncode}"
    output = f"$ {' '.join(['python', *cmd[1:]])}\n{done.stdout}{done.stderr}"
    return Row(what, f"bench/{name}.py {status}: its output is below the table"), output


def ms(d: dict[str, float]) -> str:
    return f"p99 {d['p99_ms']:.2f} ms"


def rows(mock: dict[str, Any] | None, emb: dict[str, Any] | None, off: dict[str, Any] | None,
         bk3: dict[str, Any] | None, replay: dict[str, Any] | None) -> list[Row]:  # fmt: skip
    out: list[Row] = []
    m_full = mock["full"]["mb_per_s"] if mock else float("nan")
    m_text = f"{m_full:.1f} MB/s" if mock else "not measured"

    def full(d: dict[str, Any] | None, target: str, need: float) -> None:
        if d is None:
            out.append(Row(target, "not measured (skipped)", m_text))
            return
        mb = d["full"]["mb_per_s"]
        r = mb / m_full if mock and m_full > 0 else float("nan")
        out.append(Row(target, f"{mb:.1f} MB/s", m_text, f"{r:.2f}x", yes(r >= need) if mock else "-"))

    full(emb, "full-load produce, embedded >= 0.6x mock", 0.6)
    full(bk3, "full-load produce, 3 bookies, offload on >= 0.35x mock", 0.35)
    for d, where, limit in ((emb, "embedded", 5.0), (bk3, "3 bookies", 10.0)):
        for linger in (0, 1):
            target = f"produce p99 at 25% load, {where}, linger {linger} <= {limit:g} ms"
            if d is None:
                out.append(Row(target, "not measured (skipped)"))
                continue
            p = d[f"p25_l{linger}"]
            m = mock[f"p25_l{linger}"] if mock else None
            out.append(Row(
                target, f"{ms(p)} at {p['records_per_s']:,.0f} rec/s",
                f"{ms(m)} at {m['records_per_s']:,.0f} rec/s" if m else "-",
                f"{p['p99_ms'] / m['p99_ms']:.1f}x" if m and m["p99_ms"] > 0 else "-", yes(p["p99_ms"] <= limit),
            ))  # fmt: skip
    if emb is not None and "p50_l1" in emb:
        s = emb["p50_l1"]
        target = "no stall > 20 ms at 50% load (embedded, linger 1; 5 min for the target)"
        figure = f"max {s['max_ms']:.1f} ms over {s['seconds']:.0f} s"
        out.append(Row(target, figure, met=yes(s["max_ms"] <= 20.0)))
    if emb is not None and off is not None:
        on_, off_ = emb["full"]["mb_per_s"], off["full"]["mb_per_s"]
        cost = 1 - on_ / off_ if off_ > 0 else float("nan")
        out.append(Row("offload costs <= 15% of full-load produce (embedded)",
                       f"{on_:.1f} MB/s on vs {off_:.1f} off: {cost:.0%}", met=yes(cost <= 0.15)))  # fmt: skip
    if emb is not None:
        t = emb["tail"]["mb_per_s"]
        mt = mock["tail"]["mb_per_s"] if mock else float("nan")
        recs = f"{emb['tail']['records']:,} records"
        mrecs = f"{mock['tail']['records']:,} records" if mock else ""
        if mock and mock["tail"]["records"] < emb["tail"]["records"] // 2:
            # librdkafka's mock keeps only its most recent records: a read that short is mostly start-up.
            mrecs += ", all the mock kept: no ratio"
            mt = float("nan")
        target = f"consume from the tail >= 1.5x today ({1.5 * TAIL_TODAY_MB_S:.0f} MB/s)"
        out.append(Row(target, f"{t:.0f} MB/s ({recs})",
                       f"{mock['tail']['mb_per_s']:.0f} MB/s ({mrecs})" if mock else "-",
                       f"{t / mt:.2f}x" if mock and mt > 0 else "-",
                       yes(t >= 1.5 * TAIL_TODAY_MB_S)))  # fmt: skip
    if replay is not None:
        target = f"replay from segments >= 1.5x today ({1.5 * REPLAY_TODAY_MB_S:.0f} MB/s, moto)"
        if "error" in replay:
            out.append(Row(target, f"bench/replay.py failed: {replay['error']}"))
        else:
            out.append(Row(target, f"{replay['mb_s']:.0f} MB/s ({replay['ratio']:.2f}x raw GET, same run)",
                           met=yes(replay["mb_s"] >= 1.5 * REPLAY_TODAY_MB_S)))  # fmt: skip
    for d, where in ((emb, "embedded"), (bk3, "3 bookies (broker process only)")):
        if d is None:
            continue
        peak_mb = d["peak_rss_mib"] * 1.048576
        out.append(Row(f"broker RSS peak <= 600 MB, {where}", f"{peak_mb:.0f} MB (VmHWM)", met=yes(peak_mb <= 600)))
        if "idle_rss_mib" in d:
            idle_mb = d["idle_rss_mib"] * 1.048576
            out.append(Row(f"broker RSS idle after, {where}", f"{idle_mb:.0f} MB (VmRSS after the idle pause)",
                           met=yes(idle_mb <= 600)))  # fmt: skip
    return out


def render(table_rows: list[Row]) -> str:
    head = Row("target", "figure", "mock cluster", "ratio", "met?")
    cols: list[Callable[[Row], str]] = [lambda r: r.target, lambda r: r.figure, lambda r: r.mock,
                                        lambda r: r.ratio, lambda r: r.met]  # fmt: skip
    lines = ["| " + " | ".join(c(r) for c in cols) + " |" for r in [head, *table_rows]]
    lines.insert(1, "|" + "---|" * len(cols))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="full-load seconds per setup (default 15)")
    ap.add_argument("--latency-duration", type=float, default=15.0, help="each 25%% phase, seconds (default 15)")
    ap.add_argument("--stall-duration", type=float, default=30.0, help="the 50%% phase, seconds (target: 300)")
    ap.add_argument("--tail-records", type=int, default=100_000, help="per partition, for the tail read")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds without traffic before the idle RSS")
    ap.add_argument("--replay-mib", type=int, default=256, help="bench/replay.py --size-mib (the figure: 2048)")
    ap.add_argument("--external-duration", type=float, default=20.0, help="--duration for the external benches")
    ap.add_argument("--external-timeout", type=float, default=600.0, help="longest run of one external bench")
    for name in EXTERNAL:
        ap.add_argument(f"--{name.replace('_', '-')}-args", default="", metavar="ARGS",
                        help=f"arguments for bench/{name}.py (default: {EXTERNAL[name][1]!r})")  # fmt: skip
    ap.add_argument("--skip", default="", help="comma list of: mock, embedded, offload-off, bookies3, replay, external")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"mock", "embedded", "offload-off", "bookies3", "replay", "external"}
    if unknown:
        raise SystemExit(f"--skip: unknown {sorted(unknown)}")
    command = " ".join([".venv/bin/python", "bench/targets.py", *sys.argv[1:]])
    load_before = loadavg()
    started = time.monotonic()
    mock = mock_figures(args) if "mock" not in skip else None
    emb = tidelog_figures(args, "embedded", {}, []) if "embedded" not in skip else None
    off = None
    if "offload-off" not in skip:
        off = tidelog_figures(args, "embedded, offload off", {"offload.enable": "false"}, [], full_only=True)
    bk3 = tidelog_figures(args, "3 bookies", {}, ["--bookies", "3"]) if "bookies3" not in skip else None
    replay = replay_figures(args) if "replay" not in skip else None
    table_rows = rows(mock, emb, off, bk3, replay)
    outputs = []
    if "external" not in skip:
        for name in EXTERNAL:
            row, output = external(name, args)
            table_rows.append(row)
            if output:
                outputs.append(output)
    print(machine())
    print(f"command: {command}")
    loads = [d["load"] for d in (mock, emb, bk3) if d and "load" in d]
    print(f"load average (1/5/15 min): before {load_before}; after each setup {' | '.join(loads)}; end {loadavg()}")
    print(f"took {time.monotonic() - started:.0f} s\n")
    print(render(table_rows))
    for output in outputs:
        print("\n" + output.rstrip())


if __name__ == "__main__":
    main()
