"""``tidelog topics list|create|describe|alter|delete``: kafka-topics.sh and kafka-configs.sh for topics.

Only the Kafka protocol (brokers/cli/topic_admin.py), so it works against any Kafka-compatible cluster; where
the cluster lacks an admin API the error line names it. Output is aligned tables, or JSON with ``--json``.
Exit codes: 0 done, 1 an error (unreachable, refused, unknown topic), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from brokers.cli.client import ClientError, KafkaClient
from brokers.cli.common import CommandError, add_common, emit, fail, kv_arg, table
from brokers.cli.topic_admin import (
    ConfigInfo,
    NewTopic,
    TopicInfo,
    alter_configs,
    create_partitions,
    create_topics,
    delete_topics,
    describe_configs,
    describe_topics,
    list_topics,
)

PROG = "tidelog topics"


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive count")
    return n


def _rf(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 2**15 - 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a replication factor (1..32767)")
    return n


def add_parser(sub: Any) -> None:
    topics = sub.add_parser("topics", help="list, create, describe, alter and delete topics (Kafka protocol)")
    add_common(topics, top=True)
    actions = topics.add_subparsers(dest="action", required=True, metavar="ACTION")

    ls = actions.add_parser("list", help="every topic with its partition count and replication factor")
    add_common(ls, top=False)
    ls.add_argument("--internal", action="store_true", help="include internal topics (__consumer_offsets)")

    create = actions.add_parser("create", help="create topics")
    add_common(create, top=False)
    create.add_argument("topic", nargs="+", metavar="TOPIC")
    create.add_argument("--partitions", "-p", type=_count, default=None, metavar="N",
                        help="partitions (default: the broker's num.partitions)")
    create.add_argument("--replication-factor", "-r", type=_rf, default=None, metavar="N",
                        help="replicas (default: the broker's; Tidelog accepts it, durability comes from bookies)")
    create.add_argument("--config", "-c", type=kv_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="a topic config, e.g. retention.ms=3600000 (repeatable)")
    create.add_argument("--if-not-exists", action="store_true", help="a topic that already exists is not an error")
    create.add_argument("--validate-only", action="store_true", help="check the request, create nothing")

    describe = actions.add_parser("describe", help="partitions, leaders, replicas and configs of topics")
    add_common(describe, top=False)
    describe.add_argument("topic", nargs="*", metavar="TOPIC", help="topics to describe (default: all)")
    describe.add_argument("--all-configs", action="store_true",
                          help="every config with its source (default: only those set on the topic)")
    describe.add_argument("--internal", action="store_true", help="with no TOPIC: include internal topics")

    alter = actions.add_parser("alter", help="add partitions, set or delete configs of a topic")
    add_common(alter, top=False)
    alter.add_argument("topic", metavar="TOPIC")
    alter.add_argument("--partitions", "-p", type=_count, default=None, metavar="N",
                       help="grow to N partitions in total (CreatePartitions)")
    alter.add_argument("--config", "-c", type=kv_arg, action="append", default=[], metavar="KEY=VALUE",
                       help="set a topic config (IncrementalAlterConfigs; repeatable)")
    alter.add_argument("--delete-config", action="append", default=[], metavar="KEY",
                       help="remove a topic config so the default applies again (repeatable)")
    alter.add_argument("--validate-only", action="store_true", help="check the request, change nothing")

    delete = actions.add_parser("delete", help="delete topics and their data")
    add_common(delete, top=False)
    delete.add_argument("topic", nargs="+", metavar="TOPIC")
    delete.add_argument("--if-exists", action="store_true", help="a topic that does not exist is not an error")

    topics.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return 130


async def run_async(args: argparse.Namespace) -> int:
    """Run the parsed ``topics`` command; errors become one line on stderr and exit code 1."""
    try:
        async with KafkaClient(args.bootstrap, client_id="tidelog-topics", timeout=args.timeout) as client:
            code: int = await _ACTIONS[args.action](client, args)
            return code
    except (ClientError, CommandError) as e:
        return fail(PROG, e)


# --------------------------------------------------------------------------- list


async def _list(client: KafkaClient, args: argparse.Namespace) -> int:
    topics = [t for t in await list_topics(client) if args.internal or not t.internal]
    data = [
        {"topic": t.name, "topic_id": t.topic_id, "partitions": len(t.partitions),
         "replication_factor": t.replication_factor, "internal": t.internal}
        for t in topics
    ]
    rows = [(t.name, len(t.partitions), t.replication_factor, t.topic_id) for t in topics]
    emit(args, data, table(("TOPIC", "PARTITIONS", "REPLICATION-FACTOR", "TOPIC-ID"), rows))
    return 0


# --------------------------------------------------------------------------- create


async def _create(client: KafkaClient, args: argparse.Namespace) -> int:
    configs = dict(args.config)
    wanted = [
        NewTopic(name, args.partitions or -1, args.replication_factor or -1, configs)
        for name in dict.fromkeys(args.topic)
    ]
    results = await create_topics(client, wanted, validate_only=args.validate_only)
    failed = 0
    rows, data = [], []
    for t in wanted:
        r = results.get(t.name, {"error": "NO_ANSWER", "partitions": -1, "replication_factor": -1})
        error = r["error"]
        if error and error.startswith("TOPIC_ALREADY_EXISTS") and args.if_not_exists:
            error = None
            outcome = "exists"
        elif error:
            failed += 1
            outcome = f"error: {error}"
        else:
            outcome = "valid" if args.validate_only else "created"
        parts = r["partitions"] if r["partitions"] >= 0 else (args.partitions or None)
        rf = r["replication_factor"] if r["replication_factor"] >= 0 else (args.replication_factor or None)
        rows.append((t.name, parts, rf, outcome))
        data.append({"topic": t.name, "partitions": parts, "replication_factor": rf, "result": outcome.split(":")[0],
                     "error": error})
    emit(args, data, table(("TOPIC", "PARTITIONS", "REPLICATION-FACTOR", "RESULT"), rows))
    if failed:
        return fail(PROG, f"{failed} of {len(wanted)} topic(s) not created")
    return 0


# --------------------------------------------------------------------------- describe


def _config_json(c: ConfigInfo) -> dict[str, Any]:
    return {"name": c.name, "value": None if c.sensitive else c.value, "source": c.source,
            "read_only": c.read_only, "sensitive": c.sensitive}


async def _describe(client: KafkaClient, args: argparse.Namespace) -> int:
    if args.topic:
        found, errors = await describe_topics(client, args.topic)
    else:
        found, errors = [t for t in await list_topics(client) if args.internal or not t.internal], {}
    described: list[tuple[TopicInfo, list[ConfigInfo] | None]] = []
    config_error: str | None = None
    for t in found:
        configs: list[ConfigInfo] | None = None
        if config_error is None:
            try:
                configs = await describe_configs(client, t.name)
            except ClientError as e:  # e.g. a cluster without DescribeConfigs: show the rest, say why once
                config_error = str(e)
        described.append((t, configs))
    data = [
        {"topic": t.name, "topic_id": t.topic_id, "internal": t.internal, "partitions": len(t.partitions),
         "replication_factor": t.replication_factor,
         "configs": None if configs is None else [_config_json(c) for c in configs
                                                  if args.all_configs or not c.is_default],
         "partition_details": [
             {"partition": p.partition, "leader": p.leader, "leader_epoch": p.leader_epoch,
              "replicas": list(p.replicas), "isr": list(p.isr), "error": p.error}
             for p in t.partitions
         ]}
        for t, configs in described
    ]
    if described or args.json:
        emit(args, data, "\n\n".join(_describe_text(t, c, args.all_configs) for t, c in described))
    if config_error:
        print(f"{PROG}: note: configs not shown: {config_error}", file=sys.stderr)
    for name, error in errors.items():
        fail(PROG, f"topic '{name}': {error}")
    return 1 if errors else 0


def _describe_text(t: TopicInfo, configs: list[ConfigInfo] | None, all_configs: bool) -> str:
    if configs is None:
        config_text = "-"
    else:
        config_text = ",".join(f"{c.name}={c.value}" for c in configs if not c.is_default) or "-"
    head = table(
        ("TOPIC", "TOPIC-ID", "PARTITIONS", "REPLICATION-FACTOR", "CONFIGS"),
        [(t.name, t.topic_id, len(t.partitions), t.replication_factor, config_text)],
    )
    parts = table(
        ("PARTITION", "LEADER", "LEADER-EPOCH", "REPLICAS", "ISR", "ERROR"),
        [(p.partition, p.leader, p.leader_epoch, ",".join(map(str, p.replicas)) or None,
          ",".join(map(str, p.isr)) or None, p.error) for p in t.partitions],
    )
    out = f"{head}\n\n{parts}"
    if all_configs and configs is not None:
        out += "\n\n" + table(
            ("CONFIG", "VALUE", "SOURCE", "READ-ONLY"),
            [(c.name, "(sensitive)" if c.sensitive else c.value, c.source, c.read_only) for c in configs],
        )
    return out


# --------------------------------------------------------------------------- alter


async def _alter(client: KafkaClient, args: argparse.Namespace) -> int:
    set_configs = dict(args.config)
    if args.partitions is None and not set_configs and not args.delete_config:
        raise CommandError("nothing to change: give --partitions N, --config KEY=VALUE or --delete-config KEY")
    both = set(set_configs) & set(args.delete_config)
    if both:
        raise CommandError(f"config {sorted(both)[0]!r} is both set and deleted")
    found, errors = await describe_topics(client, [args.topic])
    if errors or not found:
        raise CommandError(f"topic '{args.topic}': {errors.get(args.topic, 'UNKNOWN_TOPIC_OR_PARTITION')}")
    rows: list[tuple[str, str, str]] = []
    failed = 0
    if args.partitions is not None:
        before = len(found[0].partitions)
        error = (await create_partitions(client, {args.topic: args.partitions}, args.validate_only)).get(args.topic)
        failed += error is not None
        rows.append(("partitions", f"{before} -> {args.partitions}", f"error: {error}" if error else _done(args)))
    if set_configs or args.delete_config:
        error = await alter_configs(client, args.topic, set_configs, args.delete_config, args.validate_only)
        failed += error is not None
        result = f"error: {error}" if error else _done(args)
        rows += [(f"config {k}", v, result) for k, v in set_configs.items()]
        rows += [(f"config {k}", "(default)", result) for k in args.delete_config]
    data = {"topic": args.topic, "validate_only": args.validate_only,
            "changes": [{"change": c, "value": v, "result": r} for c, v, r in rows]}
    emit(args, data, table(("CHANGE", "VALUE", "RESULT"), rows))
    return fail(PROG, f"topic '{args.topic}': {failed} change(s) refused") if failed else 0


def _done(args: argparse.Namespace) -> str:
    return "valid" if args.validate_only else "done"


# --------------------------------------------------------------------------- delete


async def _delete(client: KafkaClient, args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.topic))
    results = await delete_topics(client, names)
    rows, data, failed = [], [], 0
    for name in names:
        error = results.get(name, "NO_ANSWER")
        if error and error.startswith("UNKNOWN_TOPIC") and args.if_exists:
            outcome, error = "absent", None
        elif error:
            outcome = f"error: {error}"
            failed += 1
        else:
            outcome = "deleted"
        rows.append((name, outcome))
        data.append({"topic": name, "result": outcome.split(":")[0], "error": error})
    emit(args, data, table(("TOPIC", "RESULT"), rows))
    if failed:
        return fail(PROG, f"{failed} of {len(names)} topic(s) not deleted")
    return 0


_ACTIONS = {"list": _list, "create": _create, "describe": _describe, "alter": _alter, "delete": _delete}
