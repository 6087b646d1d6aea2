"""Using both cores: produce and consume MB/s with ONE broker process against TWO, and where the CPU goes.

Each setup is started fresh on 127.0.0.1:

- ``embedded``: one ``tidelog run`` process with its in-process bookie and local object store (the fewest
  processes one broker can have);
- ``BxK`` (e.g. ``1x3``, ``2x3``, ``2x1``): a ``DevCluster`` (brokers/devcluster.py, as ``tidelog dev-cluster``
  starts it: etcd, moto S3, K bookie processes, B ``tidelog broker`` processes).

In each setup a topic of --partitions partitions is created (the controller spreads the leaders over the
brokers; the leader count per broker is printed), then for each --producers count N that many confluent-kafka
producer *processes* (so the client is not one Python thread) produce 1 KiB records as fast as they can for
--duration seconds (acks=all, idempotent, linger 5 ms, 1 MB batches), each to every partition; then as many
consumer processes read everything from offset 0, each a share of the partitions. Printed per run: MB/s
(10^6 B) both ways, CPU of every process over the produce phase (share of one core, from /proc), the clients'
own CPU, and the machine's busy share of all its cores (from /proc/stat), which says whether the cores were full.

    .venv/bin/python bench/processes.py                                    # the figures in docs/benchmarks.md
    .venv/bin/python bench/processes.py --setups embedded,2x1 --producers 1 --duration 5   # a quick look
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import EmbeddedBroker, machine, process_cpu_seconds  # noqa: E402
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from brokers.devcluster import DevCluster  # noqa: E402
from tests.e2e.helpers import create_topic  # noqa: E402

MB = 1_000_000


def proc_cpu(pid: int | None) -> float:
    """user+system CPU seconds of ``pid`` so far (0 if it is gone or not started)."""
    return 0.0 if pid is None else process_cpu_seconds(pid)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return float(sum(parts) - idle), float(sum(parts))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread, librdkafka's included
    return r.ru_utime + r.ru_stime


def producer_worker(bootstrap: str, topic: str, start_at: float, duration: float, record: int, out: Any) -> None:
    """One producer process: as fast as it can from ``start_at`` for ``duration`` s; puts its figures on ``out``."""
    acked = [0]
    errors: list[str] = []

    def report(err: object, msg: object) -> None:
        if err is None:
            acked[0] += record
        else:
            errors.append(str(err))

    p = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
        "batch.size": 1_000_000, "batch.num.messages": 100_000, "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 262_144, "message.timeout.ms": 120_000,
    })  # fmt: skip
    p.list_topics(topic, timeout=30)  # connections and metadata before the clock starts
    value = os.urandom(record)
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = _self_cpu()
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < duration:
        try:
            p.produce(topic, value=value, key=str(i % 1000).encode(), on_delivery=report)
            i += 1
        except BufferError:
            p.poll(0.005)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(120)
    out.put({"bytes": acked[0], "seconds": time.monotonic() - started, "cpu": _self_cpu() - cpu0,
             "errors": len(errors) + left, "first_error": errors[0] if errors else ""})  # fmt: skip


def consumer_worker(bootstrap: str, topic: str, partitions: list[int], limit: float, out: Any) -> None:
    """One consumer process: ``partitions`` from offset 0 to their end offsets; puts its figures on ``out``."""
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "tidelog-bench-unused", "enable.auto.commit": False,
        "enable.partition.eof": True, "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024, "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 512 * 1024,
    })  # fmt: skip
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
    total = sum(ends.values())
    c.assign([TopicPartition(topic, p, 0) for p in partitions])
    got = nbytes = 0
    cpu0 = _self_cpu()
    started = time.monotonic()
    while got < total and time.monotonic() - started < limit:
        for m in c.consume(10_000, timeout=1.0):
            err = m.error()
            if err is None:
                got += 1
                nbytes += len(m.value() or b"")
            elif err.code() != KafkaError._PARTITION_EOF:
                out.put({"error": str(err)})
                return
    out.put({"bytes": nbytes, "records": got, "expected": total, "seconds": time.monotonic() - started,
             "cpu": _self_cpu() - cpu0})  # fmt: skip
    c.close()


@dataclass
class Setup:
    """The processes of one setup: name -> pid, and the bootstrap."""

    label: str
    bootstrap: str
    pids: dict[str, int] = field(default_factory=dict)


def leaders_per_broker(bootstrap: str, topic: str) -> dict[int, int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=30)
    counts: dict[int, int] = {}
    for p in md.topics[topic].partitions.values():
        counts[p.leader] = counts.get(p.leader, 0) + 1
    return dict(sorted(counts.items()))


def run_clients(ctx: Any, target: Any, jobs: list[tuple[Any, ...]], timeout: float) -> list[dict[str, Any]]:
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*job, q)) for job in jobs]
    for pr in procs:
        pr.start()
    deadline = time.monotonic() + timeout
    results = [q.get(timeout=max(1.0, deadline - time.monotonic())) for _ in procs]
    for pr in procs:
        pr.join(30)
    return results


def measure(setup: Setup, topic: str, partitions: int, producers: int, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    create_topic(setup.bootstrap, topic, partitions=partitions)
    spread = leaders_per_broker(setup.bootstrap, topic)
    start_at = time.time() + 3.0  # every producer process is up and connected by then
    jobs = [(setup.bootstrap, topic, start_at, args.duration, args.record_bytes) for _ in range(producers)]
    cpu0: dict[str, float] = {}
    busy0: tuple[float, float] = (0.0, 0.0)

    def before() -> None:
        nonlocal busy0
        cpu0.update({n: proc_cpu(pid) for n, pid in setup.pids.items()})
        busy0 = machine_busy()

    # Sample the servers' CPU at the common start time, from a timer thread, while the workers run.
    import threading

    timer = threading.Timer(max(0.0, start_at - time.time()), before)
    timer.start()
    produced = run_clients(ctx, producer_worker, jobs, args.duration + 200)
    timer.join()
    busy1 = machine_busy()
    errors = [r for r in produced if r.get("errors")]
    secs = max(r["seconds"] for r in produced)
    cpu = {n: (proc_cpu(pid) - cpu0.get(n, 0.0)) / secs for n, pid in setup.pids.items()}
    total = sum(r["bytes"] for r in produced)
    out: dict[str, Any] = {
        "setup": setup.label, "producers": producers, "partitions": partitions, "leaders": spread,
        "produce_mb_s": total / MB / secs, "produce_seconds": secs, "server_cpu": cpu,
        "producer_cpu": [r["cpu"] / r["seconds"] for r in produced],
        "machine_busy": (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1]),
        "load": load(), "errors": sum(r["errors"] for r in produced),
        "first_error": next((r["first_error"] for r in errors if r["first_error"]), ""),
    }  # fmt: skip
    consumers = min(producers, partitions)
    shares = [[p for p in range(partitions) if p % consumers == i] for i in range(consumers)]
    c0 = {n: proc_cpu(pid) for n, pid in setup.pids.items()}
    t0 = time.monotonic()
    consumed = run_clients(ctx, consumer_worker, [(setup.bootstrap, topic, s, 300.0) for s in shares], 330)
    wall = time.monotonic() - t0
    bad = [r["error"] for r in consumed if "error" in r]
    if bad:
        out["consume_error"] = bad[0]
        return out
    csecs = max(r["seconds"] for r in consumed)
    out["consume_mb_s"] = sum(r["bytes"] for r in consumed) / MB / csecs
    out["consumed"] = (sum(r["records"] for r in consumed), sum(r["expected"] for r in consumed))
    out["consume_server_cpu"] = {n: (proc_cpu(pid) - c0[n]) / wall for n, pid in setup.pids.items()}
    out["consumer_cpu"] = [r["cpu"] / r["seconds"] for r in consumed]
    return out


def projection(r: dict[str, Any]) -> str:
    """Load-independent bounds from CPU per MB: on an otherwise idle machine no process gets more than one core
    for its main thread and all of them share the machine's cores. An estimate: a process's threads outside the
    event loop (librdkafka's, obstore's) may use a second core, and contention is not modelled."""
    mb = r["produce_mb_s"]
    if mb <= 0:
        return "no projection (nothing produced)"
    cores = os.cpu_count() or 1
    costs = {**r["server_cpu"], **{f"producer-{i + 1}": c for i, c in enumerate(r["producer_cpu"])}}
    per_mb = {n: c / mb for n, c in costs.items() if c > 0}  # core-seconds per MB
    total = sum(per_mb.values())
    busiest = max(per_mb, key=lambda n: per_mb[n])
    one = 1 / per_mb[busiest]
    machine_cap = cores / total
    each = ", ".join(f"{n} {v * 1000:.1f}" for n, v in per_mb.items())
    return (
        f"CPU per MB produced: {total * 1000:.0f} core-ms in all ({each}); "
        f"quiet-machine bound {min(one, machine_cap):.0f} MB/s = min({busiest} at one core {one:.0f}, "
        f"{cores} cores shared {machine_cap:.0f})"
    )


def line(r: dict[str, Any]) -> str:
    def shares(d: dict[str, float]) -> str:
        return ", ".join(f"{n} {v:.0%}" for n, v in d.items())

    ours = sum(r["server_cpu"].values()) + sum(r["producer_cpu"])
    text = (
        f"{r['setup']}, {r['producers']} producer process(es), leaders per broker {r['leaders']}: "
        f"produce {r['produce_mb_s']:.1f} MB/s; CPU: {shares(r['server_cpu'])}, "
        f"producers {' + '.join(f'{c:.0%}' for c in r['producer_cpu'])}; "
        f"machine busy {r['machine_busy']:.0%} of {os.cpu_count()} cores, of which this setup "
        f"{ours:.0%} of one core; load {r['load']}"
    )
    text += "\n    " + projection(r)
    if r.get("errors"):
        text += f"; {r['errors']} delivery errors, first: {r['first_error']}"
    if "consume_error" in r:
        return text + f"\n    consume failed: {r['consume_error']}"
    got, want = r["consumed"]
    return text + (
        f"\n    consume {r['consume_mb_s']:.1f} MB/s ({got:,}/{want:,} records; consumers "
        f"{' + '.join(f'{c:.0%}' for c in r['consumer_cpu'])}; {shares(r['consume_server_cpu'])})"
    )


def run_setup(label: str, args: argparse.Namespace, producer_counts: list[int]) -> list[dict[str, Any]]:
    configs = {} if args.offload else {"offload.enable": "false"}
    results = []
    with tempfile.TemporaryDirectory(prefix="tidelog-bench-procs-") as d:
        if label == "embedded":
            broker = EmbeddedBroker(Path(d) / "data", configs).start()
            try:
                assert broker.proc is not None
                setup = Setup(label, broker.bootstrap, {"broker": broker.proc.pid})
                for n in producer_counts:
                    results.append(measure(setup, f"bench-{n}", args.partitions, n, args))
                    print(line(results[-1]), flush=True)
            finally:
                broker.stop()
            return results
        brokers, _, bookies = label.partition("x")
        if int(bookies) < 3:  # the cluster default 3/3/2 needs 2 bookies to acknowledge; fewer: all of them
            n = int(bookies)
            configs |= {
                "ledger.ensemble.size": str(n),
                "ledger.write.quorum": str(n),
                "ledger.ack.quorum": str(min(n, 2)),
            }
        extra = [a for k, v in configs.items() for a in ("--config", f"{k}={v}")]
        with DevCluster(d, brokers=int(brokers), bookies=int(bookies), broker_args=extra) as c:
            pids = {p.name: p.pid for p in (*c.brokers, *c.bookies) if p.pid is not None}
            for p in (c.moto, c.etcd):
                if p is not None and p.pid is not None:
                    pids[p.name] = p.pid
            setup = Setup(f"{brokers} broker(s), {bookies} bookie(s)", c.bootstrap, pids)
            for n in producer_counts:
                results.append(measure(setup, f"bench-{n}", args.partitions, n, args))
                print(line(results[-1]), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--setups",
        default="embedded,1x3,2x3,1x1,2x1",
        help="embedded and/or BROKERSxBOOKIES cluster setups (default embedded,1x3,2x3,1x1,2x1)",
    )
    ap.add_argument("--producers", default="1,2", help="producer process counts per setup (default 1,2)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--record-bytes", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=15.0, help="produce phase, seconds (default 15)")
    ap.add_argument("--no-offload", dest="offload", action="store_false", help="offload.enable=false everywhere")
    args = ap.parse_args()
    counts = [int(x) for x in args.producers.split(",") if x]
    print(machine())
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; load before {load()}", flush=True)
    for label in (s.strip() for s in args.setups.split(",") if s.strip()):
        if label != "embedded" and not label.replace("x", "").isdigit():
            raise SystemExit(f"--setups: {label!r} is neither 'embedded' nor BROKERSxBOOKIES")
        run_setup(label, args, counts)


if __name__ == "__main__":
    main()
