"""``tidelog configs describe|alter``: kafka-configs.sh for topics, one broker, or every broker (the default).

Over the Kafka protocol only (DescribeConfigs, IncrementalAlterConfigs), so it works against any Kafka-compatible
cluster. A broker resource "N" goes to broker N (Kafka answers a broker's configs only from that broker); the
cluster-wide default (``--entity-default``, resource name "") and topics go to any broker. ``describe`` shows
what is set dynamically unless ``--all`` asks for every config with its source and synonyms.
Exit codes: 0 done, 1 an error (unreachable, refused, unknown resource), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import ClientError, Connection, KafkaClient, KafkaError, error_name
from brokers.cli.common import USAGE_ERROR, CommandError, add_common, emit, fail, table
from brokers.handlers.base import make

PROG = "tidelog configs"
DESCRIBE_CONFIGS, INCREMENTAL_ALTER_CONFIGS = 32, 44
ENTITY_TYPES = {"topic": 2, "topics": 2, "broker": 4, "brokers": 4}
OP_SET, OP_DELETE = 0, 1
SOURCES = {
    0: "UNKNOWN", 1: "DYNAMIC_TOPIC_CONFIG", 2: "DYNAMIC_BROKER_CONFIG", 3: "DYNAMIC_DEFAULT_BROKER_CONFIG",
    4: "STATIC_BROKER_CONFIG", 5: "DEFAULT_CONFIG", 6: "DYNAMIC_BROKER_LOGGER_CONFIG", 7: "CLIENT_METRICS_CONFIG",
    8: "GROUP_CONFIG",
}
DYNAMIC_SOURCES = ("DYNAMIC_TOPIC_CONFIG", "DYNAMIC_BROKER_CONFIG", "DYNAMIC_DEFAULT_BROKER_CONFIG")


class UsageError(CommandError):
    """The arguments cannot name a resource or a change: exit code 2, like argparse's own errors."""


@dataclass(frozen=True, slots=True)
class ConfigRow:
    """One config as DescribeConfigs reports it; synonyms are (name, value, source), highest first."""

    name: str
    value: str | None
    source: str
    read_only: bool
    sensitive: bool
    synonyms: tuple[tuple[str, str | None, str], ...]


def _error(code: ErrorCode, message: str | None) -> str | None:
    return None if code == ErrorCode.none else error_name(code) + (f": {message}" if message else "")


async def _connection(client: KafkaClient, resource_type: int, name: str, node: int | None = None) -> Connection:
    if node is None and resource_type == ENTITY_TYPES["broker"] and name != "":
        node = int(name)
    return await (client.any_connection() if node is None else client.node(node))


async def describe_resource(
    client: KafkaClient, resource_type: int, name: str, node: int | None = None
) -> list[ConfigRow]:
    """Every config of a resource with its source and synonyms, as broker ``node`` sees it (default: the broker
    itself for a broker resource, else any); raises KafkaError when it is refused."""
    conn = await _connection(client, resource_type, name, node)
    mod = conn.module(DESCRIBE_CONFIGS, 1, 4)
    resp = await conn.send(make(
        mod.DescribeConfigsRequest, include_synonyms=True, include_documentation=False,
        resources=(make(mod.DescribeConfigsResource, resource_type=resource_type, resource_name=name,
                        configuration_keys=None),),
    ))
    result = resp.results[0]
    if result.error_code != ErrorCode.none:
        reason = _error(result.error_code, result.error_message)
        raise KafkaError(result.error_code, f"DescribeConfigs {name!r}: {reason}")
    return sorted(
        (
            ConfigRow(
                c.name, c.value, SOURCES.get(int(getattr(c, "config_source", 0)), "UNKNOWN"), bool(c.read_only),
                bool(c.is_sensitive),
                tuple((s.name, s.value, SOURCES.get(int(s.source), "UNKNOWN")) for s in c.synonyms),
            )
            for c in result.configs
        ),
        key=lambda c: c.name,
    )


async def alter_resource(
    client: KafkaClient, resource_type: int, name: str, set_configs: Mapping[str, str], delete: Sequence[str],
    validate_only: bool = False,
) -> str | None:
    """IncrementalAlterConfigs on one resource: SET each of ``set_configs``, DELETE each of ``delete``; returns
    the error (None: done)."""
    conn = await _connection(client, resource_type, name)
    mod = conn.module(INCREMENTAL_ALTER_CONFIGS, 0, 1)
    ops = [make(mod.AlterableConfig, name=k, config_operation=OP_SET, value=v) for k, v in set_configs.items()]
    ops += [make(mod.AlterableConfig, name=k, config_operation=OP_DELETE, value=None) for k in delete]
    resp = await conn.send(make(
        mod.IncrementalAlterConfigsRequest, validate_only=validate_only,
        resources=(make(mod.AlterConfigsResource, resource_type=resource_type, resource_name=name,
                        configs=tuple(ops)),),
    ))
    r = resp.responses[0]
    return _error(r.error_code, r.error_message)


def split_list(value: str) -> list[str]:
    """kafka-configs.sh's comma-separated form: ``a=1,b=[x,y]`` -> ["a=1", "b=x,y"] (brackets keep commas)."""
    items, depth, current = [], 0, ""
    for ch in value:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += ch
    items.append(current)
    return [i.strip() for i in items if i.strip()]


def parse_add(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        for pair in split_list(value):
            key, sep, raw = pair.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--add-config {pair!r} is not KEY=VALUE")
            raw = raw.strip()
            out[key.strip()] = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    return out


def _entity(args: argparse.Namespace) -> tuple[int, str]:
    resource_type = ENTITY_TYPES[args.entity_type]
    if args.entity_default:
        if resource_type != ENTITY_TYPES["broker"]:
            raise UsageError("--entity-default is for brokers (the cluster-wide default)")
        return resource_type, ""
    if args.entity_name is None:
        raise UsageError("give --entity-name NAME (or --entity-default for brokers)")
    if resource_type == ENTITY_TYPES["broker"] and not args.entity_name.isdigit():
        raise UsageError(f"a broker is named by its id, not {args.entity_name!r}")
    return resource_type, args.entity_name


def add_parser(sub: Any) -> None:
    configs = sub.add_parser("configs", help="describe and alter topic and broker configs (Kafka protocol)")
    add_common(configs, top=True)
    actions = configs.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("describe", "configs of a topic or broker, with their sources"),
                         ("alter", "set or delete configs of a topic, a broker or every broker")):
        p = actions.add_parser(action, help=text)
        add_common(p, top=False)
        p.add_argument("--entity-type", required=True, choices=sorted(ENTITY_TYPES), help="what to configure")
        p.add_argument("--entity-name", metavar="NAME", help="the topic, or the broker id")
        p.add_argument("--entity-default", action="store_true", help="brokers: the cluster-wide default")
        if action == "describe":
            p.add_argument("--all", action="store_true", help="every config (default: only those set dynamically)")
        else:
            p.add_argument("--add-config", action="append", default=[], metavar="K=V[,K=V]",
                           help="set configs (kafka-configs.sh form; a list value in brackets: k=[a,b]; repeatable)")
            p.add_argument("--delete-config", action="append", default=[], metavar="K[,K]",
                           help="remove configs so the next level applies again (repeatable)")
            p.add_argument("--validate-only", action="store_true", help="check the request, change nothing")
    configs.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return 130


async def run_async(args: argparse.Namespace) -> int:
    """Run the parsed ``configs`` command; errors become one line on stderr and exit code 1."""
    try:
        resource_type, name = _entity(args)
        async with KafkaClient(args.bootstrap, client_id="tidelog-configs", timeout=args.timeout) as client:
            if args.action == "describe":
                return await _describe(client, args, resource_type, name)
            return await _alter(client, args, resource_type, name)
    except UsageError as e:
        return fail(PROG, e, USAGE_ERROR)
    except (ClientError, CommandError) as e:
        return fail(PROG, e)


async def _describe(client: KafkaClient, args: argparse.Namespace, resource_type: int, name: str) -> int:
    rows = [c for c in await describe_resource(client, resource_type, name) if args.all or c.source in DYNAMIC_SOURCES]
    data = [
        {"name": c.name, "value": c.value, "source": c.source, "read_only": c.read_only, "sensitive": c.sensitive,
         "synonyms": [{"name": n, "value": v, "source": s} for n, v, s in c.synonyms]}
        for c in rows
    ]
    lines = [(c.name, "(sensitive)" if c.sensitive else c.value, c.source, "yes" if c.read_only else "no",
              " ".join(f"{s}:{n}={v}" for n, v, s in c.synonyms[1:]) or None) for c in rows]
    emit(args, data, table(("CONFIG", "VALUE", "SOURCE", "READ-ONLY", "SYNONYMS"), lines))
    return 0


async def _alter(client: KafkaClient, args: argparse.Namespace, resource_type: int, name: str) -> int:
    set_configs = parse_add(args.add_config)
    delete = [k for value in args.delete_config for k in split_list(value)]
    if not set_configs and not delete:
        raise UsageError("nothing to change: give --add-config K=V or --delete-config K")
    both = set(set_configs) & set(delete)
    if both:
        raise UsageError(f"config {sorted(both)[0]!r} is both set and deleted")
    error = await alter_resource(client, resource_type, name, set_configs, delete, args.validate_only)
    result = f"error: {error}" if error else ("valid" if args.validate_only else "done")
    rows = [(k, v, result) for k, v in set_configs.items()] + [(k, "(deleted)", result) for k in delete]
    entity = f"{args.entity_type.rstrip('s')} {name!r}" if name else "the cluster-wide broker default"
    emit(args, {"entity": entity, "validate_only": args.validate_only, "error": error,
                "changes": [{"config": k, "value": v} for k, v, _ in rows]},
         table(("CONFIG", "VALUE", "RESULT"), rows))
    return fail(PROG, f"{entity}: {error}") if error else 0
