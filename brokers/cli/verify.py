"""``tidelog verify``: run the Jepsen-style workload against a cluster and check its history, or check a
recorded history. Exit codes: 0 valid, 1 anomalies found (or the run could not finish), 2 bad arguments.

    tidelog verify run --bootstrap 127.0.0.1:9092 --duration 30 --history run.jsonl
    tidelog verify check run.jsonl
    tidelog verify nemesis --dir /tmp/nem --duration 120 --seed 1 --etcd 3 --faults kill,pause,move,partition
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import uuid
from typing import Any

from brokers.devcluster import DevClusterError
from brokers.verify.checker import DEFAULT_EXAMPLES, check
from brokers.verify.history import HistoryWriter, read_history
from brokers.verify.nemesis import FAULT_TYPES, NemesisRun, run_nemesis


def add_parser(sub: Any) -> None:
    """Add the ``verify`` subcommand."""
    p = sub.add_parser("verify", help="check a cluster for lost, duplicated and reordered records (Jepsen-style)")
    vsub = p.add_subparsers(dest="verify_command", required=True)
    r = vsub.add_parser("run", help="run the workload, then check its history")
    r.add_argument("--bootstrap", default="127.0.0.1:9092", help="HOST:PORT[,HOST:PORT...]")
    r.add_argument("--topic", default=None, help="topic to write (default: a new verify-<random> topic)")
    r.add_argument("--partitions", type=int, default=3)
    r.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    r.add_argument("--producers", type=int, default=2)
    r.add_argument("--rate", type=float, default=100.0, help="sends per second per producer (default 100)")
    r.add_argument("--history", default=None, help="write the history here (JSON lines)")
    r.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="examples per anomaly class")
    r.set_defaults(run=run)
    c = vsub.add_parser("check", help="check a recorded history")
    c.add_argument("file")
    c.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="examples per anomaly class")
    c.set_defaults(run=run)
    n = vsub.add_parser("nemesis", help="start a dev cluster, run the workload under a seeded schedule of faults")
    n.add_argument("--dir", required=True, help="directory for the cluster's data, logs and history.jsonl")
    n.add_argument("--duration", type=float, default=120.0, help="seconds of load and faults (default 120)")
    n.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (default 0)")
    n.add_argument("--brokers", type=int, default=3)
    n.add_argument("--bookies", type=int, default=3)
    n.add_argument("--etcd", type=int, choices=(1, 3), default=1, help="etcd members (default 1)")
    n.add_argument("--faults", default=",".join(FAULT_TYPES), help=f"comma-separated (default {','.join(FAULT_TYPES)})")
    n.add_argument("--session-timeout-ms", type=int, default=3000, help="broker.session.timeout.ms (default 3000)")
    n.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="examples per anomaly class")
    n.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.verify_command == "nemesis":
        return _nemesis(args)
    if args.verify_command == "check":
        try:
            events = read_history(args.file)
        except (OSError, ValueError) as e:
            print(f"tidelog verify: error: {e}", file=sys.stderr)
            return 2
        return _report(check(events, args.examples), [])
    if args.partitions < 1 or args.producers < 1 or args.duration < 0 or args.rate <= 0:
        print("tidelog verify: error: --partitions, --producers and --rate must be positive", file=sys.stderr)
        return 2
    from confluent_kafka import KafkaException  # librdkafka is loaded only by the subcommands that use it

    from brokers.verify.workload import Workload, WorkloadConfig

    config = WorkloadConfig(
        bootstrap=args.bootstrap, topic=args.topic or f"verify-{uuid.uuid4().hex[:10]}",
        partitions=args.partitions, duration=args.duration, producers=args.producers, rate=args.rate,
    )  # fmt: skip
    out = open(args.history, "w", encoding="utf-8") if args.history else None
    try:
        workload = Workload(config, HistoryWriter(out))
        previous = signal.signal(signal.SIGTERM, lambda *_: workload.stop.set())
        try:
            workload.run()
        except KeyboardInterrupt:
            workload.stop.set()
            return 1
        except (KafkaException, TimeoutError) as e:  # no cluster to talk to, or the topic never got leaders
            print(f"tidelog verify: error: {e}", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        if out is not None:
            out.close()
    summary = check(workload.writer.events, args.examples)
    summary["topic"] = config.topic
    return _report(summary, workload.errors)


def _nemesis(args: argparse.Namespace) -> int:
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = sorted(set(faults) - set(FAULT_TYPES))
    if unknown or not faults or args.duration <= 0 or args.brokers < 2 or args.bookies < 1:
        print(f"tidelog verify: error: --faults from {','.join(FAULT_TYPES)}, --duration > 0, --brokers >= 2",
              file=sys.stderr)  # fmt: skip
        return 2
    from confluent_kafka import KafkaException

    spec = NemesisRun(directory=args.dir, duration=args.duration, seed=args.seed, brokers=args.brokers,
                      bookies=args.bookies, etcd_members=args.etcd, faults=faults,
                      session_timeout_ms=args.session_timeout_ms)  # fmt: skip
    try:
        summary = run_nemesis(spec)
    except (DevClusterError, KafkaException, TimeoutError) as e:
        print(f"tidelog verify: error: {e}", file=sys.stderr)
        return 1
    errors = summary.pop("workload-errors", [])
    return _report(summary, errors)


def _report(summary: dict[str, Any], errors: list[str]) -> int:
    if errors:
        summary["workload-errors"] = errors
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0 if summary["valid?"] and not errors else 1
