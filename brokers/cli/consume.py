"""``tidelog consume TOPIC``: print records, like kcat -C or kafka-console-consumer, over the Kafka protocol only.

Where to start: the end (new records only) by default, ``--from-beginning``, ``--offset N`` (or ``-N``: N
before the end), or with ``--group G`` the group's committed offsets. With ``--group`` the offsets consumed
are committed as the group's (an admin-style commit, generation -1: the group must have no active members —
this is a quick look, not a member of a rebalancing group). ``-e`` exits once every partition is read to
its end, ``--max-messages N`` after N records; otherwise it follows new records until Ctrl-C.
``--format`` takes kcat's tokens: %t topic, %p partition, %o offset, %k key, %v value, %T timestamp (ms),
%S key size, %s value size, %% a percent sign, and \\n \\t escapes; a newline ends each record unless the
format ends with one. ``--json`` prints one JSON object per record. Exit codes: 0, 1 an error, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import ClientError, KafkaClient
from brokers.cli.common import CommandError, add_common, fail
from brokers.cli.records import Record, as_text, fetch, leaders
from brokers.group_admin import EARLIEST, LATEST, commit_offsets, fetch_offsets, list_offsets

PROG = "tidelog consume"
_TOKEN = re.compile(r"%[tpokvTSs%]|\\[nt\\]")
_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def _offset(value: str) -> str:
    if value in ("beginning", "end"):
        return value
    try:
        int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: an offset is N, -N (N before the end), beginning, end") from None
    return value


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return n


def _partition_list(value: str) -> list[int]:
    try:
        out = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        out = [-1]
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a partition number (or a list P,P)")
    return out


def add_parser(sub: Any) -> None:
    c = sub.add_parser("consume", help="print records of a topic (like kcat -C)")
    add_common(c, top=True)
    c.add_argument("topic", metavar="TOPIC")
    c.add_argument("--partition", "-p", type=_partition_list, action="extend", default=None, metavar="P",
                   help="only these partitions (repeatable, or P,P; default all)")
    start = c.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="start at each partition's first record")
    start.add_argument("--offset", "-o", type=_offset, default=None, metavar="N|-N|beginning|end",
                       help="start at offset N, N before the end, the beginning or the end (default: end)")
    c.add_argument("--group", "-G", default=None, metavar="GROUP",
                   help="start at GROUP's committed offsets and commit what was consumed")
    c.add_argument("--max-messages", "-c", type=_positive, default=None, metavar="N", help="exit after N records")
    c.add_argument("--exit", "-e", action="store_true", help="exit when every partition is read to its end")
    c.add_argument("--format", "-f", default="%v", metavar="FMT",
                   help="how each record prints, e.g. '%%k %%v' or '%%p:%%o %%v' (default %%v)")
    c.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a follow-mode consume ends


def render(fmt: str, r: Record) -> str:
    """One record in kcat's --format tokens; a newline is added unless the format ends with one."""
    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        if token in _ESCAPES:
            return _ESCAPES[token]
        return {
            "%t": r.topic, "%p": str(r.partition), "%o": str(r.offset), "%k": as_text(r.key), "%v": as_text(r.value),
            "%T": str(r.timestamp), "%S": str(-1 if r.key is None else len(r.key)),
            "%s": str(-1 if r.value is None else len(r.value)), "%%": "%",
        }[token]

    text = _TOKEN.sub(sub, fmt)
    return text if text.endswith("\n") else text + "\n"


def as_json(r: Record) -> str:
    return json.dumps({"topic": r.topic, "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
                       "key": None if r.key is None else as_text(r.key),
                       "value": None if r.value is None else as_text(r.value)})


async def run_async(args: argparse.Namespace) -> int:
    try:
        async with KafkaClient(args.bootstrap, client_id="tidelog-consume", timeout=args.timeout) as client:
            return await _consume(client, args)
    except (ClientError, CommandError) as e:
        return fail(PROG, e)


async def _start_offsets(client: KafkaClient, args: argparse.Namespace, parts: list[int]) -> dict[int, int]:
    topic = args.topic
    tps = [(topic, p) for p in parts]
    starts = await list_offsets(client, dict.fromkeys(tps, EARLIEST))
    ends = await list_offsets(client, dict.fromkeys(tps, LATEST))
    committed: dict[tuple[str, int], int] = {}
    if args.group is not None and args.offset is None and not args.from_beginning:
        committed = await fetch_offsets(client, args.group, {topic: parts})
    out: dict[int, int] = {}
    for tp in tps:
        lo, hi = starts[tp], ends[tp]
        if tp in committed and committed[tp] >= 0:
            at = committed[tp]
        elif args.from_beginning or args.offset == "beginning":
            at = lo
        elif args.offset is None or args.offset == "end":
            at = hi
        else:
            n = int(args.offset)
            at = hi + n if n < 0 else n
        out[tp[1]] = min(max(at, lo), hi)
    return out


async def _consume(client: KafkaClient, args: argparse.Namespace) -> int:
    topic = args.topic
    lead = await leaders(client, topic)
    parts = sorted(set(args.partition)) if args.partition else sorted(lead)
    missing = [p for p in parts if p not in lead]
    if missing:
        raise CommandError(f"topic '{topic}' has no partition {missing[0]} (it has {len(lead)})")
    positions = await _start_offsets(client, args, parts)
    printed = 0
    out = sys.stdout
    try:
        while True:
            results = await fetch(client, topic, positions, max_wait_ms=200 if args.exit else 500)
            at_end = True
            for p in parts:
                r = results.get(p)
                if r is None:  # leader unknown right now: ask again
                    at_end = False
                    continue
                if r.error == ErrorCode.offset_out_of_range:
                    positions[p] = max(r.log_start, 0)
                    at_end = False
                    continue
                if r.error != ErrorCode.none:
                    at_end = False
                    continue
                for record in r.records:
                    out.write(as_json(record) + "\n" if args.json else render(args.format, record))
                    printed += 1
                    positions[p] = record.offset + 1
                    if args.max_messages is not None and printed >= args.max_messages:
                        out.flush()
                        return 0
                positions[p] = max(positions[p], r.next_offset)
                if positions[p] < r.high_watermark:
                    at_end = False
            out.flush()
            if args.group is not None:
                await _commit(client, args.group, topic, positions)
            if args.exit and at_end:
                return 0
    finally:
        if args.group is not None:
            await _commit(client, args.group, topic, positions)


async def _commit(client: KafkaClient, group: str, topic: str, positions: dict[int, int]) -> None:
    answers = await commit_offsets(client, group, {(topic, p): o for p, o in positions.items()})
    errors = {tp: c for tp, c in answers.items() if c != ErrorCode.none}
    if errors:
        (t, p), code = next(iter(errors.items()))
        raise CommandError(f"committing offsets for group '{group}' failed at {t}:{p}: {code.name.upper()} "
                           "(a group with active members cannot take these commits)")
