"""A consumer-group member in its own process, for the group end-to-end tests.

    python groups_worker.py CLIENT BOOTSTRAP GROUP TOPIC [--batch N] [--delay S] [--instance-id ID]
                            [--strategy NAME] [--session-ms MS]

CLIENT is confluent, kafka-python or aiokafka. The member subscribes to TOPIC in GROUP and, for every
batch it receives: drops records of partitions it no longer owns, prints them, then commits their offsets
synchronously (commit after processing). Commits therefore always cover exactly what was printed, so a
partition that moves to another member is resumed right after the last printed record. SIGTERM stops it
cleanly (the consumer closes and leaves the group). Each event is one JSON line on stdout:

    {"ev": "assigned", "parts": [...]}   {"ev": "revoked", "parts": [...]}
    {"ev": "recs", "recs": [[partition, offset], ...]}   {"ev": "commit_error", "error": "..."}
    {"ev": "closed"}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from typing import Any

STOP = threading.Event()


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def run_confluent(args: argparse.Namespace) -> None:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    owned: set[int] = set()
    conf: dict[str, Any] = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": args.session_ms,
        "heartbeat.interval.ms": 300,
        "partition.assignment.strategy": args.strategy or "range",
        "client.id": f"worker-{args.instance_id or ''}",
    }
    if args.instance_id:
        conf["group.instance.id"] = args.instance_id
    c = Consumer(conf)

    rebalances = [0]

    def on_assign(_c: Any, parts: list[Any]) -> None:
        owned.update(p.partition for p in parts)
        rebalances[0] += 1
        emit(ev="assigned", parts=sorted(p.partition for p in parts))

    def on_revoke(_c: Any, parts: list[Any]) -> None:
        owned.difference_update(p.partition for p in parts)
        rebalances[0] += 1
        emit(ev="revoked", parts=sorted(p.partition for p in parts))

    c.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)
    # One message per poll(), not consume(n): librdkafka serves rebalance callbacks inside a batch call and
    # keeps the messages it gathered before them, so an eager revoke-then-assign of the same partition in one
    # consume() would hand back records of the old assignment next to a fresh fetch from the committed offset.
    # Records gathered before a rebalance are dropped uncommitted; whoever owns them next re-reads them.
    pending: list[tuple[int, int]] = []
    seen = rebalances[0]
    try:
        while not STOP.is_set():
            m = c.poll(0.2)
            if rebalances[0] != seen:
                seen = rebalances[0]
                pending.clear()
            if m is not None and m.error() is None and m.partition() in owned:
                pending.append((m.partition(), m.offset()))
                if len(pending) < args.batch:
                    continue
            if pending:
                emit(ev="recs", recs=pending)
                ends: dict[int, int] = {}
                for p, o in pending:
                    ends[p] = max(ends.get(p, 0), o + 1)
                pending = []
                try:
                    c.commit(offsets=[TopicPartition(args.topic, p, o) for p, o in ends.items()], asynchronous=False)
                except KafkaException as e:
                    emit(ev="commit_error", error=str(e))
                time.sleep(args.delay)
    finally:
        c.close()


def run_kafka_python(args: argparse.Namespace) -> None:
    from kafka import KafkaConsumer, OffsetAndMetadata
    from kafka.consumer.subscription_state import ConsumerRebalanceListener
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.errors import KafkaError

    assignor = RoundRobinPartitionAssignor if args.strategy == "roundrobin" else RangePartitionAssignor

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            emit(ev="revoked", parts=sorted(tp.partition for tp in revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            emit(ev="assigned", parts=sorted(tp.partition for tp in assigned))

    c = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=args.session_ms,
        heartbeat_interval_ms=300,
        max_poll_records=args.batch,
        partition_assignment_strategy=[assignor],
        group_instance_id=args.instance_id or None,
    )
    c.subscribe([args.topic], listener=Listener())
    try:
        while not STOP.is_set():
            batch = c.poll(timeout_ms=200, max_records=args.batch)
            owned = {tp.partition for tp in c.assignment()}
            recs = [(tp.partition, m.offset) for tp, msgs in batch.items() for m in msgs if tp.partition in owned]
            if recs:
                emit(ev="recs", recs=recs)
                ends: dict[Any, OffsetAndMetadata] = {}
                for tp, msgs in batch.items():
                    if tp.partition in owned and msgs:
                        ends[tp] = OffsetAndMetadata(msgs[-1].offset + 1, "", -1)
                try:
                    c.commit(ends)
                except KafkaError as e:
                    emit(ev="commit_error", error=repr(e))
            time.sleep(args.delay)
    finally:
        c.close()


async def run_aiokafka(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from aiokafka.errors import KafkaError
    from aiokafka.structs import OffsetAndMetadata

    lock = asyncio.Lock()  # a revoke waits for the batch being printed and committed
    owned: set[int] = set()

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            async with lock:
                owned.difference_update(tp.partition for tp in revoked)
                emit(ev="revoked", parts=sorted(tp.partition for tp in revoked))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            owned.update(tp.partition for tp in assigned)
            emit(ev="assigned", parts=sorted(tp.partition for tp in assigned))

    assignor = RangePartitionAssignor if args.strategy == "range" else RoundRobinPartitionAssignor
    c = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=args.session_ms,
        heartbeat_interval_ms=300,
        partition_assignment_strategy=(assignor,),
        group_instance_id=args.instance_id or None,
    )
    c.subscribe([args.topic], listener=Listener())
    await c.start()
    try:
        while not STOP.is_set():
            batch = await c.getmany(timeout_ms=200, max_records=args.batch)
            async with lock:
                recs = [(tp.partition, m.offset) for tp, msgs in batch.items() for m in msgs if tp.partition in owned]
                if recs:
                    emit(ev="recs", recs=recs)
                    ends = {
                        tp: OffsetAndMetadata(msgs[-1].offset + 1, "")
                        for tp, msgs in batch.items()
                        if tp.partition in owned and msgs
                    }
                    try:
                        await c.commit(ends)
                    except KafkaError as e:
                        emit(ev="commit_error", error=repr(e))
            await asyncio.sleep(args.delay)
    finally:
        await c.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("client", choices=["confluent", "kafka-python", "aiokafka"])
    parser.add_argument("bootstrap")
    parser.add_argument("group")
    parser.add_argument("topic")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--instance-id", default="")
    parser.add_argument("--strategy", default="")
    parser.add_argument("--session-ms", type=int, default=6000)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    if args.client == "confluent":
        run_confluent(args)
    elif args.client == "kafka-python":
        run_kafka_python(args)
    else:
        asyncio.run(run_aiokafka(args))
    emit(ev="closed")


if __name__ == "__main__":
    main()
