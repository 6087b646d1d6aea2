"""etcd load of a Tidelog cluster: requests/s per broker, idle and under full produce load (issue 10, must-show 7).

Starts a DevCluster (brokers/devcluster.py: etcd, moto S3, --bookies bookies) with NO broker first, then adds
brokers one by one, and reads etcd's own Prometheus counters (``/metrics`` on its client URL) before and
after each window of --window seconds:

1. idle, bookies only (their registrations and lease keep-alives: the baseline brokers do not cause);
2. idle with 1, 2, ..., --brokers brokers (each window starts once the new broker holds its share of
   ``__consumer_offsets`` and a few seconds have passed);
3. full produce load with --brokers brokers: confluent-kafka producers (one per broker as bootstrap, acks=all,
   idempotent, 1 KiB values, as fast as they go) on a 12-partition topic.

A request is a gRPC message etcd received (``grpc_server_msg_received_total``): one per unary call (Range,
Put, Txn, LeaseGrant, ...) and one per message on a stream (each LeaseKeepAlive, each Watch create/cancel);
``grpc_server_handled_total`` would count a stream only when it ends. Also shown: watch events etcd sent
(``grpc_server_msg_sent_total`` of Watch) and raft proposals committed (every write). etcd cannot tell its
clients apart, so "per broker" is (total - the bookies-only baseline) / brokers.

    .venv/bin/python bench/etcd_load.py                 # the figures in docs/benchmarks.md
    .venv/bin/python bench/etcd_load.py --window 5      # a quick look

Every loop is bounded in time; the only network target is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
from common import machine  # noqa: E402

from brokers.devcluster import HOST, DevCluster  # noqa: E402

TOPIC = "etcdload"
PARTITIONS = 12
VALUE = bytes(range(256)) * 4  # 1 KiB
SETTLE_S = 3.0
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Sample:
    """etcd's counters at one moment."""

    at: float
    received: dict[str, float]  # gRPC method -> messages received
    sent: dict[str, float]  # gRPC method -> messages sent
    proposals: float  # raft proposals committed (writes)


def sample(port: int) -> Sample:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    received: dict[str, float] = collections.defaultdict(float)
    sent: dict[str, float] = collections.defaultdict(float)
    proposals = 0.0
    for line in text.splitlines():
        if line.startswith("etcd_server_proposals_committed_total "):
            proposals = float(line.split()[1])
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, value = m.group(1), dict(_LABEL.findall(m.group(2))), float(m.group(3))
        if name == "grpc_server_msg_received_total":
            received[labels.get("grpc_method", "?")] += value
        elif name == "grpc_server_msg_sent_total":
            sent[labels.get("grpc_method", "?")] += value
    return Sample(time.monotonic(), dict(received), dict(sent), proposals)


@dataclass(frozen=True)
class Window:
    name: str
    brokers: int
    seconds: float
    by_method: dict[str, float]  # requests/s
    watch_events: float  # Watch messages sent/s
    writes: float  # proposals committed/s
    produced_mb_s: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.by_method.values())


def measure(port: int, name: str, brokers: int, seconds: float, load: Any = None) -> Window:
    before = sample(port)
    time.sleep(seconds)
    after = sample(port)
    dt = after.at - before.at
    methods = sorted(set(before.received) | set(after.received))
    by_method = {m: (after.received.get(m, 0) - before.received.get(m, 0)) / dt for m in methods}
    watch = (after.sent.get("Watch", 0) - before.sent.get("Watch", 0)) / dt
    writes = (after.proposals - before.proposals) / dt
    return Window(name, brokers, dt, {m: r for m, r in by_method.items() if r > 0}, watch, writes)


class Load:
    """Producers at full speed (one per broker as bootstrap) until stopped; counts acknowledged bytes."""

    def __init__(self, bootstraps: list[str]) -> None:
        self.stop = threading.Event()
        self.acked_bytes = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(b,), daemon=True) for b in bootstraps]

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        with self._lock:
            self.acked_bytes += len(msg.value())

    def _run(self, bootstrap: str) -> None:
        from confluent_kafka import Producer

        p = Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
            "batch.size": 1_000_000, "on_delivery": self._report,
        })  # fmt: skip
        for _ in range(100_000_000):  # bounded; stopped by the event long before
            if self.stop.is_set():
                break
            try:
                p.produce(TOPIC, VALUE)
            except BufferError:
                p.poll(0.01)
                continue
            p.poll(0)
        p.flush(60)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)


def wait_offsets_balanced(bootstrap: str, brokers: set[int], timeout: float = 60.0) -> None:
    """Until ``__consumer_offsets`` is led by exactly ``brokers``, within one of each other."""
    from confluent_kafka.admin import AdminClient

    def counts() -> collections.Counter[int]:
        try:
            md = AdminClient({"bootstrap.servers": bootstrap}).list_topics("__consumer_offsets", timeout=10)
            return collections.Counter(p.leader for p in md.topics["__consumer_offsets"].partitions.values())
        except Exception:  # a broker between answers; ask again
            return collections.Counter()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = counts()
        if now and set(now) == brokers and max(now.values()) - min(now.values()) <= 1:
            return
        time.sleep(0.2)
    raise SystemExit(f"__consumer_offsets never balanced over {sorted(brokers)}")


def report(windows: list[Window], baseline: Window) -> str:
    lines = [
        "| window | brokers | etcd requests/s total | per broker (minus bookies) | watch events/s | writes/s "
        "| produced MB/s | requests/s by method |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in windows:
        per = "-" if w.brokers == 0 else f"{(w.total - baseline.total) / w.brokers:.1f}"
        methods = ", ".join(f"{m} {r:.1f}" for m, r in sorted(w.by_method.items(), key=lambda x: -x[1]))
        mb = f"{w.produced_mb_s:.1f}" if w.produced_mb_s else "-"
        lines.append(
            f"| {w.name} | {w.brokers} | {w.total:.1f} | {per} | {w.watch_events:.1f} | {w.writes:.1f} | {mb} "
            f"| {methods} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=20.0, help="seconds per measurement window (default 20)")
    ap.add_argument("--brokers", type=int, default=3, help="brokers at the end (default 3)")
    ap.add_argument("--bookies", type=int, default=3, help="bookies (default 3)")
    ap.add_argument("--dir", default=None, help="cluster directory (default: a temporary one)")
    args = ap.parse_args()

    print(machine())
    with tempfile.TemporaryDirectory(prefix="etcd-load-") as tmp:
        cluster = DevCluster(Path(args.dir or tmp), brokers=0, bookies=args.bookies)
        try:
            cluster.start()
            port = cluster.etcd_port
            time.sleep(SETTLE_S)
            baseline = measure(port, "idle, bookies only", 0, args.window)
            windows = [baseline]
            print(f"{baseline.name}: {baseline.total:.1f} requests/s", flush=True)
            for n in range(1, args.brokers + 1):
                cluster.add_broker()
                wait_offsets_balanced(cluster.bootstrap, {b.node_id for b in cluster.brokers})
                time.sleep(SETTLE_S)
                w = measure(port, "idle", n, args.window)
                windows.append(w)
                print(f"idle, {n} brokers: {w.total:.1f} requests/s", flush=True)

            from confluent_kafka.admin import AdminClient, NewTopic

            admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
            admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])[TOPIC].result(60)
            del admin  # no client left connected when the cluster stops
            time.sleep(SETTLE_S)
            w = measure(port, "idle, 12-partition topic created", args.brokers, args.window)
            windows.append(w)
            load = Load([b.address for b in cluster.brokers])
            load.start()
            time.sleep(SETTLE_S)  # producers connected and at speed
            acked_before = load.acked_bytes
            w = measure(port, "full produce load", args.brokers, args.window)
            acked = load.acked_bytes - acked_before
            load.finish()
            w = Window(w.name, w.brokers, w.seconds, w.by_method, w.watch_events, w.writes, acked / w.seconds / 1e6)
            windows.append(w)
            print(f"full produce load: {w.total:.1f} requests/s at {w.produced_mb_s:.1f} MB/s", flush=True)
            if load.errors:
                print(f"producer errors: {load.errors[:5]}")
            with open("/proc/loadavg") as f:
                print(f"load average at the end: {f.read().strip()}")
        finally:
            cluster.stop()
    print()
    print(report(windows, baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
