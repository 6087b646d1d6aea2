"""Consumer-group benchmark for Tidelog: offset commits per second, and time to a stable assignment.

Starts ``tidelog run`` itself on 127.0.0.1 with a temporary data directory and Kafka's default
``group.initial.rebalance.delay.ms`` (3000), or uses --bootstrap. Then:

1. commits/s, confluent-kafka: --committers consumers in one group (subscribed, one partition each), each
   in its own thread calling ``commit(offsets=..., asynchronous=False)`` in a loop for --commit-seconds:
   sustained commits/s and the per-commit latency (call to return);
2. commits/s, protocol level: brokers/client.py with --pipelined coroutines on one connection, each
   committing one partition of its own (empty) group with generation -1 in a loop: the broker's upper
   bound without librdkafka's one-commit-at-a-time behaviour per consumer;
3. time to a stable assignment: --members consumers on a --partitions topic, for eager (range),
   cooperative (cooperative-sticky) and KIP-848 (group.protocol=consumer). The first members - 1 join and
   settle; the clock starts just before the last member's subscribe() and stops at the rebalance callback
   after which every member holds a non-empty assignment and together they hold every partition exactly
   once (tracked from the assign/revoke/lost callbacks). Each is repeated --repeats times (fresh group).

Broker CPU (user+system of the broker process) is reported per phase when the bench started the broker.
Every loop is bounded in time; the only network target is 127.0.0.1 (or the --bootstrap you pass).

    .venv/bin/python bench/groups.py                    # the figures in docs/benchmarks.md
    .venv/bin/python bench/groups.py --commit-seconds 3 --repeats 1    # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
from common import EmbeddedBroker, machine, percentile, table  # noqa: E402

from brokers.cli.client import KafkaClient  # noqa: E402
from brokers.group_admin import commit_offsets  # noqa: E402

INITIAL_REBALANCE_DELAY_MS = 3000  # Kafka's default group.initial.rebalance.delay.ms
PROTOCOLS = {
    "eager (range)": {"group.protocol": "classic", "partition.assignment.strategy": "range"},
    "cooperative (cooperative-sticky)": {"group.protocol": "classic",
                                         "partition.assignment.strategy": "cooperative-sticky"},
    "KIP-848 (group.protocol=consumer)": {"group.protocol": "consumer"},
}


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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


def consumer_config(bootstrap: str, group: str, extra: dict[str, str]) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", **extra}


# --------------------------------------------------------------------------- commits/s, confluent-kafka


CpuClock = Callable[[], float]


def commits_confluent(bootstrap: str, committers: int, seconds: float, cpu: CpuClock) -> dict[str, float]:
    topic = f"bench-commit-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, committers)
    group = f"bench-commit-{uuid.uuid4().hex[:8]}"
    consumers = [Consumer(consumer_config(bootstrap, group, {"partition.assignment.strategy": "range"}))
                 for _ in range(committers)]
    for c in consumers:
        c.subscribe([topic])
    deadline = time.monotonic() + 120
    owned: list[list[TopicPartition]] = [[] for _ in consumers]
    while not all(owned):  # every member polls until the group has settled with one partition each
        if time.monotonic() > deadline:
            raise SystemExit("commit bench: the group did not settle within 120 s")
        for i, c in enumerate(consumers):
            c.poll(0.05)
            owned[i] = c.assignment()
    latencies = [array("d") for _ in consumers]
    errors: list[str] = []
    start = threading.Barrier(committers + 1)

    def loop(i: int) -> None:
        c, tp = consumers[i], owned[i][0]
        offset = 0
        start.wait()
        end = time.monotonic() + seconds
        while (now := time.monotonic()) < end:
            offset += 1
            try:
                c.commit(offsets=[TopicPartition(tp.topic, tp.partition, offset)], asynchronous=False)
            except KafkaException as e:
                errors.append(str(e))
                return
            latencies[i].append(time.monotonic() - now)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(committers)]
    for t in threads:
        t.start()
    start.wait()
    began, cpu_before, own_before = time.monotonic(), cpu(), time.process_time()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.monotonic() - began
    broker_cpu = (cpu() - cpu_before) / elapsed
    client_cpu = (time.process_time() - own_before) / elapsed
    for c in consumers:
        c.close()
    if errors:
        raise SystemExit(f"commit bench: {errors[0]}")
    return summary(latencies, elapsed, broker_cpu, client_cpu)


def summary(latencies: list[array[float]], elapsed: float, broker_cpu: float, client_cpu: float) -> dict[str, float]:
    lat = sorted(x for a in latencies for x in a)
    return {"commits": len(lat), "seconds": elapsed, "per_s": len(lat) / elapsed, "broker_cpu": broker_cpu,
            "client_cpu": client_cpu, "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000}


# --------------------------------------------------------------------------- commits/s, protocol level


async def _commits_protocol(bootstrap: str, pipelined: int, seconds: float, cpu: CpuClock) -> dict[str, float]:
    topic = f"bench-proto-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(create_topic, bootstrap, topic, 1)
    async with KafkaClient(bootstrap, timeout=60) as client:
        groups = [f"bench-proto-{uuid.uuid4().hex[:8]}-{i}" for i in range(pipelined)]
        await client.find_coordinators(groups)
        for g in groups:  # first commits create the (empty) groups
            await commit_offsets(client, g, {(topic, 0): 0})
        latencies = [array("d") for _ in groups]
        end = time.monotonic() + seconds

        async def loop(i: int) -> None:  # one group each: commits of one group are ordered, as a client's are
            offset = 0
            while (now := time.monotonic()) < end:
                offset += 1
                codes = await commit_offsets(client, groups[i], {(topic, 0): offset})
                if any(codes.values()):
                    raise SystemExit(f"protocol commit bench: {codes}")
                latencies[i].append(time.monotonic() - now)

        began, cpu_before, own_before = time.monotonic(), cpu(), time.process_time()
        await asyncio.gather(*(loop(i) for i in range(pipelined)))
        elapsed = time.monotonic() - began
        broker_cpu = (cpu() - cpu_before) / elapsed
        client_cpu = (time.process_time() - own_before) / elapsed
    return summary(latencies, elapsed, broker_cpu, client_cpu)


def commits_protocol(bootstrap: str, pipelined: int, seconds: float, cpu: CpuClock) -> dict[str, float]:
    return asyncio.run(_commits_protocol(bootstrap, pipelined, seconds, cpu))


# --------------------------------------------------------------------------- time to a stable assignment


@dataclass
class Tracker:
    """Every member's assignment, from its rebalance callbacks; notes when the group is first stable."""

    members: int
    partitions: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    owned: dict[int, set[int]] = field(default_factory=dict)
    need: int = 0  # members that must hold partitions for "stable"
    stable_at: float | None = None
    changed: threading.Event = field(default_factory=threading.Event)
    revoked_while_joining: int = 0
    counting_revokes: bool = False

    def arm(self, need: int) -> None:
        with self.lock:
            self.need = need
            self.stable_at = None
            self.revoked_while_joining = 0
            self.counting_revokes = True
            self._check()

    def _check(self) -> None:
        held = [self.owned.get(i, set()) for i in range(self.need)]
        every = [p for s in held for p in s]
        if all(held) and len(every) == self.partitions == len(set(every)) and self.stable_at is None:
            self.stable_at = time.monotonic()
            self.changed.set()

    def assign(self, member: int, partitions: list[TopicPartition]) -> None:
        with self.lock:
            self.owned.setdefault(member, set()).update(tp.partition for tp in partitions)
            self._check()

    def revoke(self, member: int, partitions: list[TopicPartition]) -> None:
        with self.lock:
            self.owned.setdefault(member, set()).difference_update(tp.partition for tp in partitions)
            if self.counting_revokes:
                self.revoked_while_joining += len(partitions)
            if self.stable_at is not None and not all(self.owned.get(i) for i in range(self.need)):
                self.stable_at = None  # a later rebalance took it apart again: wait for the next stable point
                self.changed.clear()


class Member(threading.Thread):
    """One consumer polling in its own thread, reporting its rebalance callbacks to the tracker."""

    def __init__(self, index: int, conf: dict[str, Any], topic: str, tracker: Tracker) -> None:
        super().__init__(daemon=True)
        self.index = index
        self.consumer = Consumer(conf)
        self.topic = topic
        self.tracker = tracker
        self.stop = threading.Event()
        self.subscribed_at = 0.0
        self.error: str | None = None

    def run(self) -> None:
        t = self.tracker
        try:
            self.subscribed_at = time.monotonic()
            self.consumer.subscribe(
                [self.topic],
                on_assign=lambda c, ps: t.assign(self.index, ps),
                on_revoke=lambda c, ps: t.revoke(self.index, ps),
                on_lost=lambda c, ps: t.revoke(self.index, ps),
            )
            while not self.stop.is_set():
                m = self.consumer.poll(0.05)
                if m is not None and m.error() is not None and not m.error().retriable():
                    self.error = str(m.error())
        finally:
            self.consumer.close()


def time_to_stable(
    bootstrap: str, conf: dict[str, str], members: int, partitions: int, join_after: float
) -> dict[str, float]:
    topic = f"bench-rebalance-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions)
    group = f"bench-rebalance-{uuid.uuid4().hex[:8]}"
    tracker = Tracker(members, partitions)
    threads = [Member(i, consumer_config(bootstrap, group, conf), topic, tracker) for i in range(members)]
    try:
        tracker.arm(members - 1)
        first = time.monotonic()
        for m in threads[:-1]:
            m.start()
        if not tracker.changed.wait(120):
            raise SystemExit(f"{members - 1} members never reached a stable assignment within 120 s")
        initial = (tracker.stable_at or 0.0) - first
        time.sleep(join_after)  # the last member arrives this long after the group settled
        tracker.changed.clear()
        tracker.arm(members)
        last = threads[-1]
        last.start()
        if not tracker.changed.wait(120):
            raise SystemExit(f"{members} members never reached a stable assignment within 120 s")
        join = (tracker.stable_at or 0.0) - last.subscribed_at
        revoked = tracker.revoked_while_joining
    finally:
        for m in threads:
            m.stop.set()
        for m in threads:
            if m.is_alive():
                m.join(60)
    errors = [m.error for m in threads if m.error]
    if errors:
        raise SystemExit(f"consumer error: {errors[0]}")
    return {"initial_s": initial, "join_s": join, "revoked": revoked}


# --------------------------------------------------------------------------- main


def broker_configs() -> dict[str, str]:
    """Kafka's default initial rebalance delay, if this broker build has the setting."""
    from dataclasses import fields

    from brokers.config import BrokerConfig

    keys = {f.metadata.get("key") for f in fields(BrokerConfig)}
    key = "group.initial.rebalance.delay.ms"
    return {key: str(INITIAL_REBALANCE_DELAY_MS)} if key in keys else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one (127.0.0.1:PORT)")
    ap.add_argument("--broker-config", action="append", default=[], metavar="K=V", help="--config for tidelog run")
    ap.add_argument("--commit-seconds", type=float, default=15.0, help="seconds per commit phase (default 15)")
    ap.add_argument("--committers", type=int, default=8, help="confluent-kafka committing threads (default 8)")
    ap.add_argument("--pipelined", type=lambda v: [int(x) for x in v.split(",")], default=[16, 128],
                    help="protocol-level commits in flight, one run per value (default 16,128)")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3, help="runs per rebalance protocol (median reported)")
    ap.add_argument("--join-after", type=float, default=1.0,
                    help="seconds between the group settling and the last member's subscribe (default 1)")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: confluent,protocol,rebalance")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    configs = broker_configs()
    configs.update(kv.split("=", 1) for kv in args.broker_config)
    broker: EmbeddedBroker | None = None
    tmp = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tidelog-bench-groups-")
        broker = EmbeddedBroker(Path(tmp.name) / "data", configs).start()
        bootstrap = broker.bootstrap
    results: dict[str, Any] = {"machine": machine(), "broker_configs": configs, "bootstrap": bootstrap}
    rows: list[tuple[str, str]] = []

    def cpu() -> float:
        return broker.cpu_seconds() if broker is not None else float("nan")

    def commit_row(what: str, r: dict[str, float]) -> tuple[str, str]:
        return (what, f"{r['per_s']:,.0f}/s  (p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                      f"CPU: broker {r['broker_cpu']:.0%}, bench client {r['client_cpu']:.0%})")

    try:
        if "confluent" not in skip:
            note(f"commits/s with confluent-kafka: {args.committers} committers, {args.commit_seconds:g} s")
            r = commits_confluent(bootstrap, args.committers, args.commit_seconds, cpu)
            results["commits_confluent"] = r
            rows.append(commit_row(f"offset commits/s, confluent-kafka sync, {args.committers} threads", r))
        if "protocol" not in skip:
            for n in args.pipelined:
                note(f"commits/s at the protocol level: {n} in flight, {args.commit_seconds:g} s")
                r = commits_protocol(bootstrap, n, args.commit_seconds, cpu)
                results[f"commits_protocol_{n}"] = r
                rows.append(commit_row(f"offset commits/s, brokers/client.py, {n} in flight", r))
        if "rebalance" not in skip:
            results["rebalance"] = {}
            for name, conf in PROTOCOLS.items():
                runs = []
                for i in range(args.repeats):
                    note(f"time to stable: {name}, run {i + 1}/{args.repeats}")
                    runs.append(time_to_stable(bootstrap, conf, args.members, args.partitions, args.join_after))
                joins = [r["join_s"] for r in runs]
                initial = statistics.median(r["initial_s"] for r in runs)
                results["rebalance"][name] = runs
                rows.append((f"{args.members}th member joins {args.partitions} partitions, {name}",
                             f"median {statistics.median(joins):.2f} s (runs: {', '.join(f'{j:.2f}' for j in joins)}; "
                             f"{args.members - 1} members first: {initial:.2f} s; "
                             f"partitions revoked: {max(r['revoked'] for r in runs):.0f})"))
    finally:
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()
    delay = configs.get("group.initial.rebalance.delay.ms", "broker default")
    print(table(rows, f"Tidelog consumer groups — {results['machine']}; group.initial.rebalance.delay.ms={delay}"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
