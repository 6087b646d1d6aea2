"""What offload costs a producer at full load: produce MB/s with offload on vs off, and how segments were built.

Starts ``tidelog run`` itself (a temporary data directory; ``--bookies N`` for local bookie processes, else
the in-process bookie) once per run, alternating offload on and off (``--rounds`` pairs), and produces 1 KiB
records at full load with confluent-kafka (acks=all, linger 5 ms, 1 MB batches) for ``--duration`` seconds.
Per run: records/s and MB/s acknowledged, broker CPU seconds, peak RSS; with offload on also the segments
offloaded during the run and how they were built (``/v1/offload``: from the owner's bytes or read back from
the bookies). Last line: the on/off ratio of the mean MB/s, and the machine load.

MB = 10^6 bytes. Every loop is bounded in time and count; the only network target is 127.0.0.1.

    PYTHONPATH=$PWD .venv/bin/python bench/offload_cost.py        # embedded, 2 rounds of 15 s
    .venv/bin/python bench/offload_cost.py --bookies 3            # three local bookie processes
    .venv/bin/python bench/offload_cost.py --duration 8 --rounds 1 --broker-config offload.owner.bytes.max=0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EmbeddedBroker, free_port, machine

MB = 1_000_000


def offload_status(admin_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/v1/offload", timeout=10) as response:
        return dict(json.loads(response.read()))


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


def full_load(bootstrap: str, topic: str, partitions: int, size: int, duration: float) -> tuple[int, float]:
    """Produce as fast as acknowledgements allow for ``duration`` s; (records acknowledged, seconds)."""
    acked = [0, 0]  # ok, failed

    def delivered(err: object, _msg: object) -> None:
        acked[1 if err is not None else 0] += 1

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "batch.size": 1_000_000,
                  "queue.buffering.max.kbytes": 262_144, "enable.idempotence": True})  # fmt: skip
    payload = os.urandom(size)
    started = time.monotonic()
    end = started + duration
    n = 0
    while time.monotonic() < end and n < 50_000_000:
        try:
            p.produce(topic, payload, partition=n % partitions, on_delivery=delivered)
            n += 1
        except BufferError:
            p.poll(0.001)
            continue
        if n % 1000 == 0:
            p.poll(0)
    left = p.flush(120)
    elapsed = time.monotonic() - started
    if left or acked[1]:
        print(f"warning: {left} records unflushed, {acked[1]} failed", file=sys.stderr)
    return acked[0], elapsed


def one_run(args: argparse.Namespace, offload: bool, base: Path, index: int) -> dict[str, Any]:
    admin_port = free_port()
    configs = dict(kv.split("=", 1) for kv in args.broker_config)
    configs["offload.enable"] = "true" if offload else "false"
    extra = ["--admin", f"127.0.0.1:{admin_port}"]
    if args.bookies:
        extra += ["--bookies", str(args.bookies)]
    data = base / f"run{index}" / "data"
    data.parent.mkdir(parents=True)
    broker = EmbeddedBroker(data, configs, extra_args=extra).start(timeout=120)
    try:
        topic = f"offload-cost-{index}"
        create_topic(broker.bootstrap, topic, args.partitions)
        cpu0 = broker.cpu_seconds()
        records, seconds = full_load(broker.bootstrap, topic, args.partitions, args.record_size, args.duration)
        cpu = broker.cpu_seconds() - cpu0
        status = offload_status(admin_port)["totals"]
        return {
            "offload": offload, "records": records, "seconds": seconds,
            "mb_s": records * args.record_size / MB / seconds, "rec_s": records / seconds, "cpu_s": cpu,
            "peak_rss_mib": broker.peak_rss_mb(),
            "segments": status["segments_offloaded"], "from_owner": status["segments_from_owner"],
            "from_bookies": status["segments_from_bookies"], "waiting": status["ledgers_waiting"],
        }  # fmt: skip
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="full-load seconds per run (default 15)")
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs, offload on then off (default 2)")
    ap.add_argument("--bookies", type=int, default=0, help="local bookie processes (default 0: in-process)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--broker-config", action="append", default=[], metavar="K=V", help="--config for tidelog run")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 10 or not 1 <= args.duration <= 600:
        raise SystemExit("--rounds must be 1..10 and --duration 1..600")
    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tidelog-offload-cost-") as tmp:
        for _round in range(args.rounds):
            for offload in (True, False):
                load = os.getloadavg()
                res = one_run(args, offload, Path(tmp), len(results))
                res["load_before"] = load
                results.append(res)
                print(
                    f"run {len(results)}: offload {'on ' if offload else 'off'}  {res['rec_s']:>9,.0f} rec/s  "
                    f"{res['mb_s']:6.1f} MB/s  broker CPU {res['cpu_s']:5.1f} s  "
                    f"peak RSS {res['peak_rss_mib']:4.0f} MiB"
                    + (f"  segments {res['segments']} (owner {res['from_owner']}, bookies {res['from_bookies']}, "
                       f"{res['waiting']} ledgers waiting)" if offload else "")
                    + f"  load {load[0]:.2f}",
                    flush=True,
                )  # fmt: skip
    on = [r["mb_s"] for r in results if r["offload"]]
    off = [r["mb_s"] for r in results if not r["offload"]]
    ratio = (sum(on) / len(on)) / (sum(off) / len(off))
    load = os.getloadavg()
    print(f"offload on / off (mean MB/s): {ratio:.2f}  ({sum(on) / len(on):.1f} / {sum(off) / len(off):.1f} MB/s; "
          f"cost {100 * (1 - ratio):.0f}%); load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
