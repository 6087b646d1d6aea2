"""``tidelog transactions``: list, describe and abort transactions, as kafka-transactions.sh does.

``list`` asks every broker (ListTransactions), ``describe`` the transactional id's coordinator
(FindCoordinator key type 1, DescribeTransactions), ``describe-producers`` a partition's leader
(DescribeProducers: each producer's open transaction and where it starts), ``find-hanging`` the open
transactions no coordinator will end (brokers/cli/txn_hanging.py), and ``abort`` ends a hanging
transaction on one partition: the producer is found by the offset its open transaction starts at
(``--start-offset``, from describe-producers) or named (``--producer-id``/``--producer-epoch``/
``--coordinator-epoch``), and a WriteTxnMarkers(ABORT) for it goes to the partition's leader. Only the Kafka
protocol is used (brokers/cli/txn_admin.py), so it works against any Kafka-compatible cluster. Output is
aligned tables, or JSON with ``--json``. Exit codes: 0 done, 1 an error, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import KafkaClient, error_name
from brokers.cli.common import USAGE_ERROR, Action, CommandError, add_common, emit, run_action, table
from brokers.cli.txn_admin import (
    abort_transaction,
    describe_producers,
    describe_transaction,
    list_transactions,
    producer_at,
)
from brokers.cli.txn_hanging import find_hanging

PROG = "tidelog transactions"
STATES = ("Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit", "CompleteAbort", "Dead",
          "PrepareEpochFence")


def _states(value: str) -> list[str]:
    by_lower = {s.lower(): s for s in STATES}
    out = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part.lower() not in by_lower:
            raise argparse.ArgumentTypeError(f"unknown transaction state {part!r} (one of {', '.join(STATES)})")
        out.append(by_lower[part.lower()])
    return out


def _non_negative(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return n


def add_parser(sub: Any) -> None:
    txns = sub.add_parser("transactions", help="list, describe and abort transactions (as kafka-transactions.sh)")
    add_common(txns, top=True)
    actions = txns.add_subparsers(dest="action", required=True, metavar="ACTION")

    ls = actions.add_parser("list", help="every transactional id on every broker: producer id, state, coordinator")
    add_common(ls, top=False)
    ls.add_argument("--state", type=_states, action="extend", default=[], help="only these states (S,S...)")
    ls.add_argument("--producer-id", type=_non_negative, action="append", default=[], help="only this producer id")
    ls.add_argument("--duration-ms", type=_non_negative, default=-1, metavar="MS",
                    help="only transactions open longer than this (ListTransactions v1)")

    describe = actions.add_parser("describe", help="one transactional id's state, epoch, timeout and partitions")
    add_common(describe, top=False)
    describe.add_argument("--transactional-id", required=True, metavar="ID")

    producers = actions.add_parser("describe-producers", help="the producers of a partition and their open transaction")
    add_common(producers, top=False)
    producers.add_argument("--topic", required=True)
    producers.add_argument("--partition", type=_non_negative, required=True)

    hanging = actions.add_parser("find-hanging", help="open transactions no coordinator will end (then: abort)")
    add_common(hanging, top=False)
    where = hanging.add_mutually_exclusive_group(required=True)
    where.add_argument("--broker-id", type=_non_negative, help="every partition this broker leads")
    where.add_argument("--topic", help="the partitions of this topic")
    hanging.add_argument("--partition", type=_non_negative, help="with --topic: only this partition")
    hanging.add_argument("--max-transaction-timeout", type=_non_negative, default=15, metavar="MINUTES",
                         help="open at least this long to be suspected (transaction.max.timeout.ms; default 15)")

    abort = actions.add_parser("abort", help="abort a hanging transaction on one partition (WriteTxnMarkers ABORT)")
    add_common(abort, top=False)
    abort.add_argument("--topic", required=True)
    abort.add_argument("--partition", type=_non_negative, required=True)
    which = abort.add_mutually_exclusive_group(required=True)
    which.add_argument("--start-offset", type=_non_negative, metavar="OFFSET",
                       help="the first offset of the open transaction (see describe-producers)")
    which.add_argument("--producer-id", type=_non_negative, help="instead of --start-offset: the producer id")
    abort.add_argument("--producer-epoch", type=_non_negative, help="with --producer-id: its epoch")
    abort.add_argument("--coordinator-epoch", type=int, default=0, help="with --producer-id: the coordinator epoch")

    txns.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    if args.action == "abort" and args.producer_id is not None and args.producer_epoch is None:
        print(f"{PROG} abort: error: --producer-id needs --producer-epoch", file=sys.stderr)
        return USAGE_ERROR
    if args.action == "find-hanging" and args.partition is not None and args.topic is None:
        print(f"{PROG} find-hanging: error: --partition needs --topic", file=sys.stderr)
        return USAGE_ERROR
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return 130



async def run_async(args: argparse.Namespace) -> int:
    """Run the parsed command; errors become one line on stderr and exit code 1."""
    return await run_action(args, _ACTIONS, PROG, "tidelog-transactions")


async def _list(client: KafkaClient, args: argparse.Namespace) -> int:
    found, failed = await list_transactions(client, args.state, args.producer_id, args.duration_ms)
    data = [{"transactional_id": t.transactional_id, "coordinator": t.coordinator, "producer_id": t.producer_id,
             "state": t.state} for t in found]
    rows = [(t.transactional_id, t.coordinator, t.producer_id, t.state) for t in found]
    emit(args, data, table(("TRANSACTIONAL-ID", "COORDINATOR", "PRODUCER-ID", "STATE"), rows))
    for node_id, why in failed.items():
        print(f"{PROG}: error: broker {node_id} did not answer: {why}", file=sys.stderr)
    return 1 if failed else 0


async def _describe(client: KafkaClient, args: argparse.Namespace) -> int:
    d = await describe_transaction(client, args.transactional_id)
    now = int(time.time() * 1000)
    duration = None if d.start_ms < 0 else max(0, now - d.start_ms)
    parts = ",".join(f"{t}-{p}" for t, p in d.partitions) or None
    data = {
        "coordinator": d.coordinator.node_id, "transactional_id": d.transactional_id, "producer_id": d.producer_id,
        "producer_epoch": d.producer_epoch, "state": d.state, "timeout_ms": d.timeout_ms,
        "start_time_ms": None if d.start_ms < 0 else d.start_ms, "duration_ms": duration,
        "partitions": [{"topic": t, "partition": p} for t, p in d.partitions],
    }
    row = (d.coordinator.node_id, d.transactional_id, d.producer_id, d.producer_epoch, d.state, d.timeout_ms,
           data["start_time_ms"], duration, parts)
    emit(args, data, table(("COORDINATOR", "TRANSACTIONAL-ID", "PRODUCER-ID", "PRODUCER-EPOCH", "STATE",
                            "TIMEOUT-MS", "START-TIME-MS", "DURATION-MS", "PARTITIONS"), [row]))
    return 0


def _opt(n: int) -> int | None:
    return None if n < 0 else n


async def _describe_producers(client: KafkaClient, args: argparse.Namespace) -> int:
    found = await describe_producers(client, args.topic, args.partition)
    data = [{"producer_id": p.producer_id, "producer_epoch": p.producer_epoch, "last_sequence": p.last_sequence,
             "last_timestamp": _opt(p.last_timestamp), "coordinator_epoch": _opt(p.coordinator_epoch),
             "txn_start_offset": _opt(p.txn_start_offset)} for p in found]
    rows = [(p.producer_id, p.producer_epoch, p.last_sequence, _opt(p.last_timestamp), _opt(p.coordinator_epoch),
             _opt(p.txn_start_offset)) for p in found]
    emit(args, data, table(("PRODUCER-ID", "PRODUCER-EPOCH", "LAST-SEQUENCE", "LAST-TIMESTAMP",
                            "COORDINATOR-EPOCH", "TXN-START-OFFSET"), rows))
    return 0


async def _partitions(client: KafkaClient, args: argparse.Namespace) -> list[tuple[str, int]]:
    if args.topic is None:
        resp = await client.metadata(None)
        return sorted((t.name, int(p.partition_index)) for t in resp.topics for p in t.partitions
                      if int(p.leader_id) == args.broker_id)
    existing = (await client.partitions([args.topic])).get(args.topic)
    if existing is None:
        raise CommandError(f"topic '{args.topic}' does not exist")
    if args.partition is None:
        return [(args.topic, p) for p in sorted(existing)]
    if args.partition not in existing:
        raise CommandError(f"topic '{args.topic}' has no partition {args.partition}")
    return [(args.topic, args.partition)]


async def _find_hanging(client: KafkaClient, args: argparse.Namespace) -> int:
    now = int(time.time() * 1000)
    found, problems = await find_hanging(client, await _partitions(client, args), now,
                                         args.max_transaction_timeout * 60_000)
    rows = []
    data = []
    for h in found:
        p = h.open.producer
        minutes = None if p.last_timestamp < 0 else (now - p.last_timestamp) // 60_000
        rows.append((h.open.topic, h.open.partition, p.producer_id, p.producer_epoch, _opt(p.coordinator_epoch),
                     p.txn_start_offset, _opt(p.last_timestamp), minutes, h.transactional_id, h.reason))
        data.append({"topic": h.open.topic, "partition": h.open.partition, "producer_id": p.producer_id,
                     "producer_epoch": p.producer_epoch, "coordinator_epoch": _opt(p.coordinator_epoch),
                     "start_offset": p.txn_start_offset, "last_timestamp": _opt(p.last_timestamp),
                     "duration_minutes": minutes, "transactional_id": h.transactional_id, "reason": h.reason})
    emit(args, data, table(("TOPIC", "PARTITION", "PRODUCER-ID", "PRODUCER-EPOCH", "COORDINATOR-EPOCH",
                            "START-OFFSET", "LAST-TIMESTAMP", "DURATION-MIN", "TRANSACTIONAL-ID", "REASON"), rows))
    for problem in problems:
        print(f"{PROG}: error: not checked: {problem}", file=sys.stderr)
    return 1 if problems else 0


async def _abort(client: KafkaClient, args: argparse.Namespace) -> int:
    if args.start_offset is not None:
        p = await producer_at(client, args.topic, args.partition, args.start_offset)
        producer_id, epoch, coordinator_epoch = p.producer_id, p.producer_epoch, p.coordinator_epoch
    else:
        producer_id, epoch, coordinator_epoch = args.producer_id, args.producer_epoch, args.coordinator_epoch
    code = await abort_transaction(client, args.topic, args.partition, producer_id, epoch, coordinator_epoch)
    data = {"topic": args.topic, "partition": args.partition, "producer_id": producer_id, "producer_epoch": epoch,
            "coordinator_epoch": max(coordinator_epoch, 0),
            "error": None if code == ErrorCode.none else error_name(code)}
    result = "aborted" if code == ErrorCode.none else f"error: {error_name(code)}"
    emit(args, data, table(("TOPIC", "PARTITION", "PRODUCER-ID", "PRODUCER-EPOCH", "RESULT"),
                           [(args.topic, args.partition, producer_id, epoch, result)]))
    if code != ErrorCode.none:
        raise CommandError(f"the abort marker was refused: {error_name(code)}")
    return 0


_ACTIONS: dict[str, Action] = {
    "list": _list, "describe": _describe, "describe-producers": _describe_producers, "find-hanging": _find_hanging,
    "abort": _abort,
}
