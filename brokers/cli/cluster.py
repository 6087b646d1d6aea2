"""``tidelog partitions move|list`` and ``tidelog cluster status``: where partitions live, and moving them.

Everything goes over the Kafka protocol (brokers/cli/client.py), so it works from anywhere a client can reach a
broker: ``partitions move TOPIC:P --to NODE`` sends AlterPartitionReassignments (the controller honours the
request as a pin, see brokers/cluster/controller.py) and polls Metadata until the partition's leader is
NODE, then prints how long that took and how long the partition had no leader in Metadata (the pause
clients see). ``partitions list`` prints owner and leader epoch per partition (Metadata) and, for brokers
whose admin endpoint is given (``--admin HOST:PORT,...``, the ``/v1/offload`` JSON), the ledgers and bytes
still on the bookies and the segments and bytes in the object store; without ``--admin`` those columns
are '-'. ``cluster status`` prints the brokers, the controller, partitions led per broker, moves in
progress, and (with ``--metadata etcd://...``) the registered bookies.
Exit codes: 0 done, 1 an error (unreachable, refused, timed out), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import ClientError, KafkaClient
from brokers.cli.common import Progress, add_common, table
from brokers.cli.offload import StatusError, fetch_status
from brokers.config import ConfigError, parse_hostport

POLL_INTERVAL = 0.05


class CommandError(Exception):
    """The command cannot do what was asked; the message is printed as one line, exit code 1."""


def _admins(value: str) -> list[tuple[str, int]]:
    try:
        return [parse_hostport(p.strip(), "--admin") for p in value.split(",") if p.strip()]
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _topic_partition(value: str) -> tuple[str, int]:
    topic, sep, part = value.rpartition(":")
    if not sep or not topic or not part.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not TOPIC:PARTITION")
    return topic, int(part)


def _common(p: argparse.ArgumentParser) -> None:
    """The shared --bootstrap/--json/--timeout (brokers/cli/common.py); moves may take a while: 60 s."""
    add_common(p, top=True, timeout=60.0)


def add_parser(sub: Any) -> None:
    """Add the ``partitions`` and ``cluster`` subcommands."""
    parts = sub.add_parser("partitions", help="where partitions live; move them to another broker")
    actions = parts.add_subparsers(dest="action", required=True, metavar="ACTION")
    move = actions.add_parser("move", help="move partitions to a broker and wait until it leads them (TOPIC:P ...)")
    move.add_argument("partition", type=_topic_partition, nargs="+", metavar="TOPIC:P")
    move.add_argument("--to", type=int, required=True, metavar="NODE", help="the target broker's node id")
    _common(move)
    listing = actions.add_parser("list", help="owner, epoch and storage per partition")
    listing.add_argument("--topic", metavar="TOPIC", help="only this topic")
    listing.add_argument("--internal", action="store_true", help="list internal topics (__...) too")
    listing.add_argument(
        "--admin", type=_admins, default=[], metavar="HOST:PORT[,...]",
        help="brokers' admin endpoints, for bookie and object-store sizes (their /v1/offload)",
    )  # fmt: skip
    _common(listing)
    parts.set_defaults(run=run_command)
    cluster = sub.add_parser("cluster", help="the cluster's brokers, controller and bookies")
    cluster_actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = cluster_actions.add_parser("status", help="brokers, controller, partitions per broker, bookies")
    status.add_argument(
        "--metadata", default=None, metavar="etcd://HOST:PORT|postgresql://...", help="to list registered bookies"
    )
    status.add_argument("--cluster", default="tidelog", help="cluster name (metadata prefix; with --metadata)")
    _common(status)
    cluster.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    prog = f"tidelog {args.command} {args.action}"
    try:
        return asyncio.run(_dispatch(args))
    except (CommandError, ClientError, StatusError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


async def _dispatch(args: argparse.Namespace) -> int:
    async with KafkaClient(args.bootstrap, timeout=min(args.timeout, 30.0)) as client:
        if args.command == "partitions" and args.action == "move":
            return await move(client, args)
        if args.command == "partitions":
            return await list_partitions(client, args)
        return await cluster_status(client, args)


def _emit(args: argparse.Namespace, data: object, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


# --------------------------------------------------------------------------- partitions move


def _leader(resp: Any, topic: str, partition: int) -> tuple[int, int] | None:
    """(leader id, leader epoch) of one partition in a Metadata answer; None if the topic/partition is unknown."""
    for t in resp.topics:
        if t.name == topic and t.error_code == ErrorCode.none:
            for p in t.partitions:
                if int(p.partition_index) == partition:
                    return int(p.leader_id), int(p.leader_epoch)
    return None


async def move(client: KafkaClient, args: argparse.Namespace) -> int:
    """Move each TOPIC:P to ``--to`` (one AlterPartitionReassignments) and wait until it leads them all; one
    partition prints as before (a dict with --json), several as a list, with a progress bar on a terminal."""
    wanted: list[tuple[str, int]] = list(dict.fromkeys(args.partition))
    topics = sorted({t for t, _ in wanted})
    resp = await client.metadata(topics)
    before = {tp: _leader(resp, *tp) for tp in wanted}
    missing = [tp for tp, found in before.items() if found is None]
    if missing:
        raise CommandError(f"{missing[0][0]}:{missing[0][1]} does not exist")
    started = time.monotonic()
    answers = await client.alter_partition_reassignments(dict.fromkeys(wanted, args.to))
    refused = [(tp, err) for tp, err in answers.items() if err is not None]
    if refused:
        (t, p), err = refused[0]
        raise CommandError(f"{t}:{p} to broker {args.to}: {err}")
    deadline = started + args.timeout
    leaderless = dict.fromkeys(wanted, 0.0)
    now_leader: dict[tuple[str, int], tuple[int, int]] = {tp: b for tp, b in before.items() if b is not None}
    took: dict[tuple[str, int], float] = {}
    progress = Progress(f"move to broker {args.to}", len(wanted))
    last_poll = time.monotonic()
    try:
        while len(took) < len(wanted):
            try:
                resp = await client.metadata(topics)
            except ClientError:  # the broker we asked may be the one letting go; ask another next time
                await client.close()
                resp = None
            now = time.monotonic()
            for tp in wanted:
                if tp in took:
                    continue
                found = None if resp is None else _leader(resp, *tp)
                if found is None or found[0] < 0:
                    leaderless[tp] += now - last_poll
                if found is not None:
                    now_leader[tp] = found
                    if found[0] == args.to:
                        took[tp] = now - started
                        progress.advance()
            last_poll = now
            if len(took) == len(wanted):
                break
            if now > deadline:
                t, p = next(tp for tp in wanted if tp not in took)
                raise CommandError(
                    f"{t}:{p}: leader is still {now_leader[(t, p)][0]} after {args.timeout:g}s "
                    f"({len(took)} of {len(wanted)} moved; the move requests stay; `tidelog cluster status` lists them)"
                )
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        progress.done()
    rows = []
    for tp in wanted:
        b = before[tp] or now_leader[tp]  # never None: checked above
        rows.append({
            "topic": tp[0], "partition": tp[1], "from": b[0], "to": args.to, "epoch_before": b[1],
            "epoch": now_leader[tp][1], "seconds": round(took[tp], 3), "leaderless_seconds": round(leaderless[tp], 3),
        })  # fmt: skip
    text = "\n".join(
        f"{r['topic']}:{r['partition']} moved from broker {r['from']} to {r['to']} "
        f"(epoch {r['epoch_before']} -> {r['epoch']}) in {r['seconds']:.2f}s; "
        f"no leader in Metadata for {r['leaderless_seconds']:.2f}s"
        for r in rows
    )
    _emit(args, rows[0] if len(rows) == 1 else rows, text)
    return 0


# --------------------------------------------------------------------------- partitions list


Sizes = dict[tuple[str, int], dict[str, Any]]


def _sizes(admins: Sequence[tuple[str, int]], timeout: float) -> tuple[Sizes, list[str]]:
    """Per-partition storage figures from each admin endpoint (a partition's owner reports it)."""
    found: Sizes = {}
    errors = []
    for host, port in admins:
        try:
            status = fetch_status(host, port, None, timeout)
        except StatusError as e:
            errors.append(str(e))
            continue
        for p in status.get("partitions", []):
            found[(str(p["topic"]), int(p["partition"]))] = p
    return found, errors


async def list_partitions(client: KafkaClient, args: argparse.Namespace) -> int:
    resp = await client.metadata(None if args.topic is None else [args.topic])
    sizes, errors = _sizes(args.admin, min(args.timeout, 10.0))
    moving = await _moves(client)
    rows: list[dict[str, Any]] = []
    for t in sorted(resp.topics, key=lambda t: t.name):
        if t.error_code != ErrorCode.none:
            if args.topic is not None:
                raise CommandError(f"topic {t.name}: {t.error_code.name.upper()}")
            continue
        if (t.name.startswith("__") or t.is_internal) and not (args.internal or args.topic):
            continue
        for p in sorted(t.partitions, key=lambda p: p.partition_index):
            index = int(p.partition_index)
            size = sizes.get((t.name, index), {})
            rows.append({
                "topic": t.name, "partition": index, "leader": int(p.leader_id), "epoch": int(p.leader_epoch),
                "moving_to": moving.get((t.name, index)),
                "ledgers": size.get("ledgers"), "bookie_bytes": size.get("bytes_waiting"),
                "segments": size.get("segments"), "object_store_bytes": size.get("offloaded_bytes"),
            })  # fmt: skip
    headers = ("TOPIC", "PARTITION", "LEADER", "EPOCH", "MOVING-TO", "LEDGERS", "BOOKIE-BYTES", "SEGMENTS", "S3-BYTES")
    text = table(headers, [tuple(r.values()) for r in rows])
    if not args.admin:
        text += "\n(storage columns need --admin HOST:PORT,... of the brokers)"
    for e in errors:
        text += f"\nwarning: {e}"
    _emit(args, rows, text)
    return 0


async def _moves(client: KafkaClient) -> dict[tuple[str, int], int]:
    """Moves in progress: (topic, partition) -> target (empty if the broker does not support the API)."""
    try:
        ongoing = await client.list_partition_reassignments()
    except ClientError:
        return {}
    return {tp: adding[0] for tp, (_replicas, adding, _removing) in ongoing.items() if adding}


# --------------------------------------------------------------------------- cluster status


async def _bookies(url: str, cluster: str) -> list[dict[str, Any]]:
    from metadata.keys import Keys
    from metadata.open import open_store
    from storage.bookie.registry import BookieAddress

    store = await open_store(url)
    try:
        found = await store.list(Keys(cluster).bookies_prefix())
    finally:
        await store.close()
    out = []
    for item in found:
        try:
            b = BookieAddress.decode(item.value)
        except (ValueError, KeyError, TypeError):
            continue
        out.append({"id": b.bookie_id, "address": f"{b.host}:{b.port}", "rack": b.rack or None})
    return out


async def cluster_status(client: KafkaClient, args: argparse.Namespace) -> int:
    resp = await client.metadata(None)
    led: Counter[int] = Counter()
    leaderless = 0
    for t in resp.topics:
        for p in t.partitions:
            if int(p.leader_id) >= 0:
                led[int(p.leader_id)] += 1
            else:
                leaderless += 1
    controller = int(resp.controller_id)
    brokers = [
        {"node_id": int(b.node_id), "address": f"{b.host}:{int(b.port)}", "rack": b.rack,
         "controller": int(b.node_id) == controller, "partitions": led.get(int(b.node_id), 0)}
        for b in sorted(resp.brokers, key=lambda b: b.node_id)
    ]  # fmt: skip
    moving = await _moves(client)
    bookies: list[dict[str, Any]] | None = None
    bookie_error = None
    if args.metadata:
        try:
            bookies = await asyncio.wait_for(_bookies(args.metadata, args.cluster), min(args.timeout, 10.0))
        except (OSError, TimeoutError, ValueError) as e:
            bookie_error = f"{args.metadata}: {e!r}"
        except Exception as e:  # the metadata client's own errors: report, the rest of the status still stands
            bookie_error = f"{args.metadata}: {e!r}"
    data: dict[str, Any] = {
        "cluster_id": resp.cluster_id, "controller": controller, "brokers": brokers,
        "partitions": sum(led.values()) + leaderless, "leaderless_partitions": leaderless,
        "moves": [{"topic": t, "partition": p, "to": n} for (t, p), n in sorted(moving.items())],
        "bookies": bookies,
    }  # fmt: skip
    lines = [
        f"cluster {resp.cluster_id}: {len(brokers)} brokers, controller {controller}, "
        f"{data['partitions']} partitions ({leaderless} without a leader), {len(moving)} moves in progress",
        "",
        table(
            ("NODE", "ADDRESS", "RACK", "CONTROLLER", "PARTITIONS"),
            [(b["node_id"], b["address"], b["rack"], "*" if b["controller"] else "", b["partitions"]) for b in brokers],
        ),
    ]
    if moving:
        lines += ["", table(("TOPIC", "PARTITION", "MOVING-TO"), [(t, p, n) for (t, p), n in sorted(moving.items())])]
    if bookies is not None:
        lines += ["", table(("BOOKIE", "ADDRESS", "RACK"), [(b["id"], b["address"], b["rack"]) for b in bookies])]
    elif bookie_error:
        lines += ["", f"bookies: unreachable ({bookie_error})"]
    else:
        lines += ["", "bookies: not shown (pass --metadata etcd://HOST:PORT)"]
    _emit(args, data, "\n".join(lines))
    return 0
