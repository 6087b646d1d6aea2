"""``tidelog acls add|list|remove``: kafka-acls.sh over the Kafka protocol (CreateAcls, DescribeAcls, DeleteAcls).

A resource is one of ``--topic NAME``, ``--group NAME``, ``--transactional-id NAME`` or ``--cluster``; a name
is literal unless ``--resource-pattern-type prefixed`` (``*`` alone is every name). ``add`` creates one ACL per
principal, host and operation; ``list`` and ``remove`` take the same options as filters (what is left out
matches everything; ``--resource-pattern-type match`` lists every ACL that applies to a name, literal,
wildcard and prefixed). Exit codes: 0 done, 1 an error (unreachable, refused), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from kio.schema.errors import ErrorCode
from kio.static.primitive import i8

from brokers.cli.client import ClientError, KafkaClient, KafkaError, error_name
from brokers.cli.common import USAGE_ERROR, CommandError, add_common, emit, fail, table
from brokers.handlers.base import make
from brokers.security.acl import CLUSTER_NAME, AclOperation, AclPermission, PatternType, ResourceType

PROG = "tidelog acls"
DESCRIBE_ACLS, CREATE_ACLS, DELETE_ACLS = 29, 30, 31
OPERATIONS = sorted(op.name for op in AclOperation if op not in (AclOperation.UNKNOWN, AclOperation.ANY))
PATTERNS = ("literal", "prefixed", "match", "any")


class UsageError(CommandError):
    """Arguments that do not make an ACL or a filter: exit code 2."""


def _resource(args: argparse.Namespace, required: bool) -> tuple[ResourceType, str | None]:
    given = [(t, n) for t, n in (
        (ResourceType.TOPIC, args.topic), (ResourceType.GROUP, args.group),
        (ResourceType.TRANSACTIONAL_ID, args.transactional_id),
        (ResourceType.CLUSTER, CLUSTER_NAME if args.cluster else None),
    ) if n is not None]  # fmt: skip
    if len(given) > 1:
        raise UsageError("give one resource: --topic, --group, --transactional-id or --cluster")
    if not given:
        if required:
            raise UsageError("which resource? give --topic, --group, --transactional-id or --cluster")
        return ResourceType.ANY, None
    return given[0]


def _entries(args: argparse.Namespace) -> list[tuple[str, str, AclPermission]]:
    """(principal, host, permission) of every ACL ``add`` creates."""
    out = [(p, h, AclPermission.ALLOW) for p in args.allow_principal for h in args.allow_host or ["*"]]
    out += [(p, h, AclPermission.DENY) for p in args.deny_principal for h in args.deny_host or ["*"]]
    if not out:
        raise UsageError("whose ACL? give --allow-principal or --deny-principal (Type:name, e.g. User:alice)")
    return out


def add_parser(sub: Any) -> None:
    acls = sub.add_parser("acls", help="add, list and remove ACLs (Kafka protocol; kafka-acls.sh)")
    add_common(acls, top=True)
    actions = acls.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "create ACLs"), ("list", "list the ACLs a filter matches"),
                         ("remove", "delete the ACLs a filter matches")):
        p = actions.add_parser(action, help=text)
        add_common(p, top=False)
        p.add_argument("--topic", metavar="NAME")
        p.add_argument("--group", metavar="NAME")
        p.add_argument("--transactional-id", metavar="NAME")
        p.add_argument("--cluster", action="store_true", help="the cluster resource")
        default_pattern = "literal" if action == "add" else "any"
        p.add_argument("--resource-pattern-type", choices=PATTERNS[:2] if action == "add" else PATTERNS,
                       default=default_pattern, help=f"how the name matches (default {default_pattern})")
        p.add_argument("--operation", action="append", default=[], type=str.upper, choices=OPERATIONS,
                       metavar="OP", help=f"one of {', '.join(OPERATIONS)} (repeatable)")
        if action == "add":
            p.add_argument("--allow-principal", action="append", default=[], metavar="TYPE:NAME")
            p.add_argument("--deny-principal", action="append", default=[], metavar="TYPE:NAME")
            p.add_argument("--allow-host", action="append", default=[], metavar="HOST", help="default *")
            p.add_argument("--deny-host", action="append", default=[], metavar="HOST", help="default *")
        else:
            p.add_argument("--principal", metavar="TYPE:NAME", help="only this principal's ACLs")
            p.add_argument("--host", metavar="HOST", help="only ACLs for this host")
            p.add_argument("--permission", type=str.upper, choices=("ALLOW", "DENY"), help="only ALLOW or DENY")
    acls.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return 130


async def run_async(args: argparse.Namespace) -> int:
    """Run the parsed ``acls`` command; errors become one line on stderr and exit code 1."""
    try:
        action = {"add": _add, "list": _list, "remove": _remove}[args.action]
        async with KafkaClient(args.bootstrap, client_id="tidelog-acls", timeout=args.timeout) as client:
            return await action(client, args)
    except UsageError as e:
        return fail(PROG, e, USAGE_ERROR)
    except (ClientError, CommandError) as e:
        return fail(PROG, e)


def _check(code: ErrorCode, message: str | None, what: str) -> None:
    if code != ErrorCode.none:
        raise KafkaError(code, f"{what}: {error_name(code)}" + (f": {message}" if message else ""))


def _row(rtype: int, name: str, pattern: int, principal: str, host: str, op: int, perm: int) -> dict[str, str]:
    return {"resource_type": ResourceType(rtype).name, "name": name, "pattern_type": PatternType(pattern).name,
            "principal": principal, "host": host, "operation": AclOperation(op).name,
            "permission": AclPermission(perm).name}


def _print(args: argparse.Namespace, rows: list[dict[str, str]]) -> None:
    keys = ("resource_type", "name", "pattern_type", "principal", "host", "operation", "permission")
    emit(args, rows, table(tuple(k.upper().replace("_", "-") for k in keys), [[r[k] for k in keys] for r in rows]))


async def _add(client: KafkaClient, args: argparse.Namespace) -> int:
    rtype, name = _resource(args, required=True)
    if not args.operation:
        raise UsageError("which operation? give --operation (e.g. READ, WRITE, ALL)")
    pattern = PatternType[args.resource_pattern_type.upper()]
    wanted = [(p, h, perm, AclOperation[op]) for p, h, perm in _entries(args) for op in args.operation]
    conn = await client.any_connection()
    mod = conn.module(CREATE_ACLS, 1, 3)
    resp = await conn.send(make(mod.CreateAclsRequest, creations=tuple(
        make(mod.AclCreation, resource_type=i8(rtype), resource_name=name, resource_pattern_type=i8(pattern),
             principal=p, host=h, operation=i8(op), permission_type=i8(perm))
        for p, h, perm, op in wanted
    )))
    for result in resp.results:
        _check(result.error_code, result.error_message, "CreateAcls")
    _print(args, [_row(rtype, name or "", pattern, p, h, op, perm) for p, h, perm, op in wanted])
    return 0


def _filters(args: argparse.Namespace) -> list[dict[str, Any]]:
    rtype, name = _resource(args, required=False)
    pattern = PatternType[args.resource_pattern_type.upper()]
    perm = AclPermission[args.permission] if args.permission else AclPermission.ANY
    ops = [AclOperation[op] for op in args.operation] or [AclOperation.ANY]
    return [
        {"resource_type_filter": i8(rtype), "resource_name_filter": name, "pattern_type_filter": i8(pattern),
         "principal_filter": args.principal, "host_filter": args.host, "operation": i8(op),
         "permission_type": i8(perm)}
        for op in ops
    ]


async def _list(client: KafkaClient, args: argparse.Namespace) -> int:
    conn = await client.any_connection()
    mod = conn.module(DESCRIBE_ACLS, 1, 3)
    rows: list[dict[str, str]] = []
    for f in _filters(args):
        resp = await conn.send(make(mod.DescribeAclsRequest, **f))
        _check(resp.error_code, resp.error_message, "DescribeAcls")
        rows += [_row(r.resource_type, r.resource_name, r.pattern_type, a.principal, a.host, a.operation,
                      a.permission_type) for r in resp.resources for a in r.acls]
    _print(args, rows)
    return 0


async def _remove(client: KafkaClient, args: argparse.Namespace) -> int:
    conn = await client.any_connection()
    mod = conn.module(DELETE_ACLS, 1, 3)
    resp = await conn.send(make(mod.DeleteAclsRequest, filters=tuple(
        make(mod.DeleteAclsFilter, **f) for f in _filters(args)
    )))
    rows: list[dict[str, str]] = []
    for result in resp.filter_results:
        _check(result.error_code, result.error_message, "DeleteAcls")
        rows += [_row(a.resource_type, a.resource_name, a.pattern_type, a.principal, a.host, a.operation,
                      a.permission_type) for a in result.matching_acls]
    _print(args, rows)
    return 0
