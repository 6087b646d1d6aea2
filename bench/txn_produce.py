"""Transactional produce benchmark (issue 14, must-show 6): MB/s and commit latency, beside idempotent produce.

Starts ``tidelog run`` on 127.0.0.1 with a temporary data directory (or uses --bootstrap), creates a topic of
--partitions (default 3) partitions and runs three phases with confluent-kafka (librdkafka), each for
--duration seconds (bounded by --max-records too):

1. idempotent, streaming: ``enable.idempotence=true`` (acks=all), produce as fast as the client queues allow:
   MB/s, records/s — the ceiling without transactions;
2. idempotent, 100-record steps: produce --txn-records (default 100) records round-robin over the partitions,
   then ``flush()``; MB/s and flush latency p50/p99 — the same synchronous cadence as phase 3 without the
   transaction, so the difference is what the transaction protocol costs;
3. transactional: ``begin_transaction``, the same --txn-records records round-robin over the partitions,
   ``commit_transaction`` (which flushes, then EndTxn, then the coordinator writes a COMMIT marker to every
   partition before answering); MB/s, transactions/s, and commit latency p50/p99/max (the commit call alone)
   and transaction latency (begin -> commit returned).

Afterwards a check: read_committed ListOffsets equals the high watermark on every partition (no transaction
left open), and the high watermarks add up to the records acknowledged plus one marker per partition per
transaction. MB = 10^6 bytes of record values. Figures go to stdout (and --json PATH).

    .venv/bin/python bench/txn_produce.py                      # the figures in docs/benchmarks.md
    .venv/bin/python bench/txn_produce.py --duration 5         # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import IsolationLevel, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EmbeddedBroker, machine, percentile, table

MB = 1_000_000
CALL_TIMEOUT_S = 60.0  # hang guard of each flush / commit


def create_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)[topic].result(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        time.sleep(0.1)
    raise SystemExit(f"topic {topic} did not appear")


class Counts:
    """Acknowledged records and delivery errors, counted from delivery reports."""

    def __init__(self) -> None:
        self.acked = 0
        self.errors = 0
        self.first_error = ""

    def report(self, err: KafkaError | None, _msg: object) -> None:
        if err is None:
            self.acked += 1
        else:
            self.errors += 1
            self.first_error = self.first_error or str(err)


def lat_ms(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "n": float(len(s)),
        "p50_ms": 1000 * percentile(s, 50),
        "p99_ms": 1000 * percentile(s, 99),
        "max_ms": 1000 * (s[-1] if s else float("nan")),
    }


def streaming(bootstrap: str, topic: str, parts: int, value: bytes, duration: float, max_records: int) -> dict:
    counts = Counts()
    p = Producer({
        "bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "batch.size": 1_000_000,
        "queue.buffering.max.messages": 200_000, "queue.buffering.max.kbytes": 256 * 1024,
    })  # fmt: skip
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < duration and n < max_records:
        try:
            p.produce(topic, value=value, partition=n % parts, on_delivery=counts.report)
            n += 1
        except BufferError:
            p.poll(0.005)
        if n % 1000 == 0:
            p.poll(0)
    p.flush(CALL_TIMEOUT_S)
    elapsed = time.monotonic() - start
    return {"records": counts.acked, "errors": counts.errors, "first_error": counts.first_error,
            "seconds": elapsed, "mb_per_s": counts.acked * len(value) / MB / elapsed,
            "records_per_s": counts.acked / elapsed}  # fmt: skip


def stepped(
    bootstrap: str, topic: str, parts: int, value: bytes, per_step: int, duration: float, max_records: int,
    transactional: bool,
) -> dict:  # fmt: skip
    """Steps of ``per_step`` records: flush() each (idempotent) or begin/commit each (transactional)."""
    counts = Counts()
    conf: dict[str, object] = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                               "batch.size": 1_000_000}  # fmt: skip
    if transactional:
        conf["transactional.id"] = f"bench-txn-{uuid.uuid4().hex[:8]}"
    p = Producer(conf)
    if transactional:
        p.init_transactions(CALL_TIMEOUT_S)
    ends: list[float] = []  # flush or commit call
    whole: list[float] = []  # first produce (begin) -> flushed / committed
    start = time.monotonic()
    n = steps = 0
    while time.monotonic() - start < duration and n < max_records:
        t0 = time.monotonic()
        if transactional:
            p.begin_transaction()
        for i in range(per_step):
            p.produce(topic, value=value, partition=i % parts, on_delivery=counts.report)
        p.poll(0)
        t1 = time.monotonic()
        if transactional:
            p.commit_transaction(CALL_TIMEOUT_S)
        else:
            left = p.flush(CALL_TIMEOUT_S)
            if left:
                raise SystemExit(f"flush left {left} records")
        t2 = time.monotonic()
        ends.append(t2 - t1)
        whole.append(t2 - t0)
        n += per_step
        steps += 1
    p.flush(CALL_TIMEOUT_S)
    elapsed = time.monotonic() - start
    return {"records": counts.acked, "errors": counts.errors, "first_error": counts.first_error,
            "steps": steps, "seconds": elapsed, "mb_per_s": counts.acked * len(value) / MB / elapsed,
            "records_per_s": counts.acked / elapsed, "steps_per_s": steps / elapsed,
            "end": lat_ms(ends), "whole": lat_ms(whole)}  # fmt: skip


def offsets(admin: AdminClient, topic: str, parts: int, committed: bool) -> dict[int, int]:
    level = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(parts)},
                                 isolation_level=level, request_timeout=30)  # fmt: skip
    return {tp.partition: f.result(30).offset for tp, f in futures.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one (127.0.0.1:PORT)")
    ap.add_argument("--broker-config", action="append", default=[], metavar="K=V", help="--config for tidelog run")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--txn-records", type=int, default=100, help="records per transaction (and per flush step)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase (default 20)")
    ap.add_argument("--max-records", type=int, default=3_000_000, help="per phase")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    broker = None
    tmp = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tidelog-txn-bench-")
        configs = dict(kv.split("=", 1) for kv in args.broker_config)
        broker = EmbeddedBroker(Path(tmp.name) / "data", configs).start()
        bootstrap = broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})  # held: it cancels its futures when collected
    value = bytes(range(256)) * (args.record_size // 256) + b"x" * (args.record_size % 256)
    parts = args.partitions
    figures: dict[str, object] = {"machine": machine(), "record_size": args.record_size, "partitions": parts,
                                  "txn_records": args.txn_records}  # fmt: skip

    def note(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        for name, run in (
            ("idempotent_streaming", lambda t: streaming(bootstrap, t, parts, value, args.duration, args.max_records)),
            ("idempotent_steps", lambda t: stepped(bootstrap, t, parts, value, args.txn_records, args.duration,
                                                   args.max_records, transactional=False)),
            ("transactional", lambda t: stepped(bootstrap, t, parts, value, args.txn_records, args.duration,
                                                args.max_records, transactional=True)),
        ):  # fmt: skip
            topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
            create_topic(admin, topic, parts)
            note(f"{name}: {args.duration:.0f} s ...")
            cpu0 = broker.cpu_seconds() if broker else 0.0
            result = run(topic)
            if broker:
                result["broker_cpu_pct"] = 100 * (broker.cpu_seconds() - cpu0) / result["seconds"]
            # The coordinator writes the last commit's markers after answering EndTxn: wait (bounded) for them.
            markers = parts * result.get("steps", 0) if name == "transactional" else 0
            settle_until = time.monotonic() + 30
            while True:
                hw = offsets(admin, topic, parts, committed=False)
                lso = offsets(admin, topic, parts, committed=True)
                if (lso == hw and sum(hw.values()) == result["records"] + markers) or time.monotonic() > settle_until:
                    break
                time.sleep(0.05)
            result["check"] = {"hw_sum": sum(hw.values()), "expected": result["records"] + markers,
                               "lso_equals_hw": lso == hw}  # fmt: skip
            figures[name] = result
    finally:
        if broker:
            broker.stop()
        if tmp:
            tmp.cleanup()

    def lat(d: dict[str, float]) -> str:
        return f"p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, max {d['max_ms']:.1f} ms (n={d['n']:.0f})"

    def cpu(d: dict) -> str:
        return f"{d['broker_cpu_pct']:.0f}%" if "broker_cpu_pct" in d else "n/a"

    s, i, t = figures["idempotent_streaming"], figures["idempotent_steps"], figures["transactional"]
    assert isinstance(s, dict) and isinstance(i, dict) and isinstance(t, dict)
    rows = [
        ("machine", str(figures["machine"])),
        ("records", f"{args.record_size} B values, {parts} partitions, {args.txn_records} records per step/txn"),
        ("idempotent streaming", f"{s['mb_per_s']:.2f} MB/s, {s['records_per_s']:,.0f} rec/s, broker CPU {cpu(s)}"),
        ("idempotent 100-rec steps", f"{i['mb_per_s']:.2f} MB/s, {i['steps_per_s']:.1f} steps/s, broker CPU {cpu(i)}"),
        ("  flush latency", lat(i["end"])),
        ("transactional", f"{t['mb_per_s']:.2f} MB/s, {t['steps_per_s']:.1f} txn/s, broker CPU {cpu(t)}"),
        ("  commit latency", lat(t["end"])),
        ("  begin->committed", lat(t["whole"])),
        ("delivery errors", f"streaming {s['errors']}, steps {i['errors']}, transactional {t['errors']} "
                            f"{t['first_error'] or s['first_error'] or i['first_error']}"),
        ("check (HW sum = records + markers, LSO = HW)",
         ", ".join(f"{k}: {d['check']}" for k, d in (("streaming", s), ("steps", i), ("txn", t)))),
    ]  # fmt: skip
    print(table(rows, "Tidelog transactional produce (confluent-kafka)"))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
