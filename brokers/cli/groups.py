"""``tidelog groups``: list, describe (with lag), reset the offsets of, and delete consumer groups.

It behaves like kafka-consumer-groups.sh and talks only the Kafka protocol (``brokers/group_admin.py``), so
it works against any Kafka-compatible cluster. Output is aligned tables, or JSON with ``--json``.
Exit codes: 0 done, 1 an error (unreachable broker, unknown group, a refused operation), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import KafkaClient, error_name
from brokers.cli.common import Action, CommandError, Progress, add_common, emit, run_action, table
from brokers.group_admin import (
    DEAD,
    EARLIEST,
    EMPTY,
    LATEST,
    TP,
    GroupDescription,
    MemberDescription,
    commit_offsets,
    delete_groups,
    describe_group,
    fetch_offsets,
    list_groups,
    list_offsets,
)

PROG = "tidelog groups"
STATES = ("Stable", "Empty", "PreparingRebalance", "CompletingRebalance", "Dead", "Assigning", "Reconciling")
TYPES = ("classic", "consumer")


# --------------------------------------------------------------------------- arguments


def _states(value: str) -> list[str]:
    by_lower = {s.lower(): s for s in STATES}
    out = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part.lower() not in by_lower:
            raise argparse.ArgumentTypeError(f"unknown group state {part!r} (one of {', '.join(STATES)})")
        out.append(by_lower[part.lower()])
    return out


def _topic_spec(value: str) -> tuple[str, tuple[int, ...]]:
    """``TOPIC`` (every partition) or ``TOPIC:P[,P|,A-B...]``."""
    topic, sep, parts = value.partition(":")
    if not topic:
        raise argparse.ArgumentTypeError(f"{value!r}: no topic name")
    if not sep:
        return topic, ()
    partitions: list[int] = []
    try:
        for part in parts.split(","):
            lo, dash, hi = part.strip().partition("-")
            first, last = int(lo), int(hi if dash else lo)
            if first < 0 or last < first:
                raise ValueError(part)
            partitions.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: partitions must be like T:0,1,4-7") from None
    return topic, tuple(sorted(set(partitions)))


def _datetime_ms(value: str) -> int:
    """ISO 8601 date-time to epoch milliseconds; without a zone it is local time (as Kafka's tool reads it)."""
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 date-time, e.g. 2024-05-01T12:00:00Z") from None
    aware = moment.astimezone() if moment.tzinfo is None else moment
    return max(0, int(aware.timestamp() * 1000))  # before 1970: from the start (negatives mean latest/earliest)


def add_parser(sub: Any) -> None:
    groups = sub.add_parser("groups", help="list, describe, reset offsets of, and delete consumer groups")
    add_common(groups, top=True)
    actions = groups.add_subparsers(dest="action", required=True, metavar="ACTION")

    ls = actions.add_parser("list", help="every group: id, state, type, protocol type")
    add_common(ls, top=False)
    ls.add_argument("--state", type=_states, action="extend", default=[], help="only groups in these states (S,S...)")
    ls.add_argument("--type", choices=TYPES, action="append", default=[], help="only groups of this type")

    describe = actions.add_parser("describe", help="state, members, and committed offset and lag per partition")
    add_common(describe, top=False)
    describe.add_argument("group", nargs="+", metavar="GROUP")

    reset = actions.add_parser("reset-offsets", help="move an inactive group's committed offsets (dry run by default)")
    add_common(reset, top=False)
    reset.add_argument("group", metavar="GROUP")
    which = reset.add_mutually_exclusive_group(required=True)
    which.add_argument("--topic", type=_topic_spec, action="append", metavar="TOPIC[:P,...]",
                       help="a topic, optionally with partitions (repeatable)")
    which.add_argument("--all-topics", action="store_true", help="every topic the group has committed offsets for")
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the log start offset")
    to.add_argument("--to-latest", action="store_true", help="the log end offset")
    to.add_argument("--to-offset", type=int, metavar="N", help="offset N (kept within the log's bounds)")
    to.add_argument("--to-datetime", type=_datetime_ms, metavar="ISO8601",
                    help="the first offset at or after this time (local time unless a zone is given)")
    to.add_argument("--shift-by", type=int, metavar="N", help="the committed offset plus N (may be negative)")
    mode = reset.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="commit the new offsets (without it: only show them)")
    mode.add_argument("--dry-run", action="store_true", help="only show the new offsets (the default)")

    delete = actions.add_parser("delete", help="delete empty groups and their committed offsets")
    add_common(delete, top=False)
    delete.add_argument("group", nargs="+", metavar="GROUP")

    groups.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return 130



async def run_async(args: argparse.Namespace) -> int:
    """Run the parsed ``groups`` command; errors become one line on stderr and exit code 1."""
    return await run_action(args, _ACTIONS, PROG, "tidelog-groups")


# --------------------------------------------------------------------------- output


# --------------------------------------------------------------------------- list


async def _list(client: KafkaClient, args: argparse.Namespace) -> int:
    groups = await list_groups(client, states=args.state, types=args.type)
    data = [
        {"group": g.group_id, "state": g.state, "type": g.group_type, "protocol_type": g.protocol_type} for g in groups
    ]
    rows = [(g.group_id, g.state or None, g.group_type or None, g.protocol_type or None) for g in groups]
    emit(args, data, table(("GROUP", "STATE", "TYPE", "PROTOCOL-TYPE"), rows))
    return 0


# --------------------------------------------------------------------------- describe


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """A partition's committed offset, log end offset and lag, with the member it is assigned to."""

    topic: str
    partition: int
    committed: int | None
    log_end: int | None
    owner: MemberDescription | None

    @property
    def lag(self) -> int | None:
        if self.committed is None or self.log_end is None:
            return None
        return max(0, self.log_end - self.committed)


async def partition_lags(client: KafkaClient, desc: GroupDescription, committed: dict[TP, int]) -> list[PartitionLag]:
    """Every partition the group has an offset for or is assigned, with its log end offset (ListOffsets)."""
    owners = {tp: m for m in desc.members for tp in m.assignment}
    tps = sorted(set(committed) | set(owners))
    existing = await client.partitions({t for t, _ in tps})
    live = {tp: LATEST for tp in tps if tp[1] in existing.get(tp[0], {})}
    ends = await list_offsets(client, live) if live else {}
    return [PartitionLag(t, p, committed.get((t, p)), ends.get((t, p)), owners.get((t, p))) for t, p in tps]


def _assignment_text(assignment: Sequence[TP]) -> str:
    by_topic: dict[str, list[str]] = {}
    for t, p in assignment:
        by_topic.setdefault(t, []).append(str(p))
    return " ".join(f"{t}:{','.join(ps)}" for t, ps in by_topic.items()) or "-"


def _describe_json(desc: GroupDescription, lags: list[PartitionLag]) -> dict[str, object]:
    c = desc.coordinator
    return {
        "group": desc.group_id, "type": desc.group_type, "state": desc.state, "protocol_type": desc.protocol_type,
        "protocol": desc.protocol, "epoch": desc.epoch, "assignment_epoch": desc.assignment_epoch,
        "coordinator": {"id": c.node_id, "host": c.host, "port": c.port},
        "members": [
            {"member_id": m.member_id, "instance_id": m.instance_id, "client_id": m.client_id, "host": m.host,
             "epoch": m.epoch, "assignment": [{"topic": t, "partition": p} for t, p in m.assignment]}
            for m in desc.members
        ],
        "partitions": [
            {"topic": x.topic, "partition": x.partition, "current_offset": x.committed, "log_end_offset": x.log_end,
             "lag": x.lag, "member_id": x.owner.member_id if x.owner else None,
             "client_id": x.owner.client_id if x.owner else None, "host": x.owner.host if x.owner else None}
            for x in lags
        ],
    }


def _describe_text(desc: GroupDescription, lags: list[PartitionLag]) -> str:
    head = table(
        ("GROUP", "TYPE", "STATE", "PROTOCOL-TYPE", "PROTOCOL", "EPOCH", "COORDINATOR", "MEMBERS"),
        [(desc.group_id, desc.group_type, desc.state, desc.protocol_type or None, desc.protocol or None, desc.epoch,
          str(desc.coordinator), len(desc.members))],
    )
    parts = table(
        ("TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST", "CLIENT-ID"),
        [(x.topic, x.partition, x.committed, x.log_end, x.lag, x.owner.member_id if x.owner else None,
          x.owner.host if x.owner else None, x.owner.client_id if x.owner else None) for x in lags],
    )
    if desc.members:
        members = table(
            ("MEMBER-ID", "INSTANCE-ID", "CLIENT-ID", "HOST", "EPOCH", "ASSIGNMENT"),
            [(m.member_id, m.instance_id, m.client_id, m.host, m.epoch, _assignment_text(m.assignment))
             for m in desc.members],
        )
    else:
        members = f"Consumer group '{desc.group_id}' has no active members."
    return f"{head}\n\n{parts}\n\n{members}"


async def _describe(client: KafkaClient, args: argparse.Namespace) -> int:
    found: list[tuple[GroupDescription, list[PartitionLag]]] = []
    missing: list[str] = []
    for group_id in dict.fromkeys(args.group):
        desc = await describe_group(client, group_id)
        committed = await fetch_offsets(client, group_id)
        if not desc.exists and not committed:
            missing.append(group_id)
            continue
        if not desc.exists:  # offsets without group state: report it as Kafka does, an empty group
            desc = GroupDescription(group_id, desc.group_type, EMPTY, "", "", None, None, desc.coordinator, ())
        found.append((desc, await partition_lags(client, desc, committed)))
    if found or not missing:
        text = "\n\n\n".join(_describe_text(d, lags) for d, lags in found)
        emit(args, [_describe_json(d, lags) for d, lags in found], text)
    for group_id in missing:
        print(f"{PROG}: error: consumer group '{group_id}' does not exist", file=sys.stderr)
    return 1 if missing else 0


# --------------------------------------------------------------------------- reset-offsets


async def _targets(client: KafkaClient, args: argparse.Namespace, committed: dict[TP, int]) -> list[TP]:
    if args.all_topics:
        if not committed:
            raise CommandError(f"group '{args.group}' has no committed offsets; name topics with --topic")
        return sorted(committed)
    specs: list[tuple[str, tuple[int, ...]]] = args.topic
    existing = await client.partitions(t for t, _ in specs)
    out: set[TP] = set()
    for topic, partitions in specs:
        if topic not in existing:
            raise CommandError(f"topic '{topic}' does not exist")
        have = existing[topic]
        bad = [p for p in partitions if p not in have]
        if bad:
            raise CommandError(f"topic '{topic}' has no partition {bad[0]} (it has {len(have)})")
        out.update((topic, p) for p in (partitions or sorted(have)))
    return sorted(out)


async def new_offsets(
    client: KafkaClient, args: argparse.Namespace, targets: list[TP], committed: dict[TP, int]
) -> dict[TP, int]:
    """Where each target partition's offset goes, by the chosen --to-*/--shift-by (kept in the log's bounds)."""
    if args.to_datetime is not None:
        at = await list_offsets(client, {tp: args.to_datetime for tp in targets})
        ends = await list_offsets(client, {tp: LATEST for tp in targets if at[tp] < 0})
        return {tp: at[tp] if at[tp] >= 0 else ends[tp] for tp in targets}
    starts = await list_offsets(client, {tp: EARLIEST for tp in targets})
    ends = await list_offsets(client, {tp: LATEST for tp in targets})
    if args.to_earliest:
        return starts
    if args.to_latest:
        return ends
    if args.shift_by is not None:
        missing = [tp for tp in targets if tp not in committed]
        if missing:
            raise CommandError(
                f"cannot shift the offset of {missing[0][0]}:{missing[0][1]}: the group has no committed offset there"
            )
        wanted = {tp: committed[tp] + args.shift_by for tp in targets}
    else:
        wanted = dict.fromkeys(targets, args.to_offset)
    return {tp: min(max(wanted[tp], starts[tp]), ends[tp]) for tp in targets}


async def _reset(client: KafkaClient, args: argparse.Namespace) -> int:
    group = args.group
    desc = await describe_group(client, group)
    if desc.state not in (EMPTY, DEAD):
        raise CommandError(
            f"offsets can only be reset while group '{group}' is inactive, but its state is {desc.state} "
            f"({len(desc.members)} member(s)); stop its consumers first"
        )
    committed = await fetch_offsets(client, group)
    targets = await _targets(client, args, committed)
    planned = await new_offsets(client, args, targets, committed)
    errors: dict[TP, ErrorCode] = {}
    if args.execute:
        errors = await _commit_in_chunks(client, group, planned)
    rows = [(group, t, p, committed.get((t, p)), planned[(t, p)], error_name(errors[(t, p)]) if (t, p) in errors
             else None) for t, p in targets]
    data = {
        "group": group, "executed": bool(args.execute),
        "partitions": [{"topic": r[1], "partition": r[2], "current_offset": r[3], "new_offset": r[4], "error": r[5]}
                       for r in rows],
    }
    emit(args, data, table(("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET", "ERROR"), rows))
    if not args.execute:
        print("Dry run: nothing was committed. Add --execute to commit these offsets.", file=sys.stderr)
    if errors:
        tp, code = next(iter(errors.items()))
        raise CommandError(f"{len(errors)} offset commit(s) failed, e.g. {tp[0]}:{tp[1]}: {error_name(code)}")
    return 0


COMMIT_CHUNK = 200


async def _commit_in_chunks(client: KafkaClient, group: str, planned: dict[TP, int]) -> dict[TP, ErrorCode]:
    """Commit the new offsets, COMMIT_CHUNK partitions per request, with a progress bar on a terminal (a reset
    over thousands of partitions takes a while); returns the partitions whose commit failed."""
    items = sorted(planned.items())
    progress = Progress(f"reset {group}", len(items))
    errors: dict[TP, ErrorCode] = {}
    try:
        for i in range(0, len(items), COMMIT_CHUNK):
            chunk = dict(items[i : i + COMMIT_CHUNK])
            answers = await commit_offsets(client, group, chunk)
            errors.update((tp, c) for tp, c in answers.items() if c != ErrorCode.none)
            progress.advance(len(chunk))
    finally:
        progress.done()
    return errors


# --------------------------------------------------------------------------- delete


async def _delete(client: KafkaClient, args: argparse.Namespace) -> int:
    results = await delete_groups(client, args.group)
    data = [{"group": g, "error": None if c == ErrorCode.none else error_name(c)} for g, c in results.items()]
    rows = [(g, "deleted" if c == ErrorCode.none else f"error: {error_name(c)}") for g, c in results.items()]
    emit(args, data, table(("GROUP", "RESULT"), rows))
    failed = [g for g, c in results.items() if c != ErrorCode.none]
    if failed:
        print(f"{PROG}: error: {len(failed)} of {len(results)} group(s) not deleted: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


_ACTIONS: dict[str, Action] = {"list": _list, "describe": _describe, "reset-offsets": _reset, "delete": _delete}
