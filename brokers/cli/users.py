"""``tidelog users create|delete|list``: SCRAM users (kafka-configs.sh --entity-type users --alter
--add-config 'SCRAM-SHA-512=[password=...]'), over the Kafka protocol (AlterUserScramCredentials,
DescribeUserScramCredentials), so it works against any Kafka-compatible cluster.

The password is salted here (a random salt, PBKDF2 with the mechanism's hash, as Kafka's admin client does):
only the salted password crosses the wire, and the broker keeps only the salt and the derived keys. Prefer
``--password-stdin`` to ``--password`` (a command line is visible to other users of the machine).
Exit codes: 0 done, 1 an error (unreachable, refused, unknown user), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.cli.client import ClientError, KafkaClient, error_name
from brokers.cli.common import USAGE_ERROR, CommandError, add_common, emit, fail, table
from brokers.handlers.base import make
from brokers.security.scram import MAX_ITERATIONS, MECHANISM_IDS, MECHANISM_NAMES, MIN_ITERATIONS, salted_password

PROG = "tidelog users"
DESCRIBE, ALTER = 50, 51


class UsageError(CommandError):
    """Bad arguments: exit code 2."""


def add_parser(sub: Any) -> None:
    users = sub.add_parser("users", help="create, delete and list SCRAM users (Kafka protocol)")
    add_common(users, top=True)
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="add a user, or set a new password")
    delete = actions.add_parser("delete", help="remove a user's credentials")
    listing = actions.add_parser("list", help="users and their SCRAM mechanisms")
    for p in (create, delete, listing):
        add_common(p, top=False)
    for p in (create, delete):
        p.add_argument("name", help="the user name (the principal is User:NAME)")
        p.add_argument("--mechanism", action="append", choices=sorted(MECHANISM_IDS), default=[],
                       help="SCRAM-SHA-256 or SCRAM-SHA-512 (repeatable; create: default SCRAM-SHA-512, "
                       "delete: default every mechanism the user has)")
    create.add_argument("--password", help="the password (visible to `ps`: prefer --password-stdin)")
    create.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    create.add_argument("--iterations", type=int, default=MIN_ITERATIONS,
                        help=f"PBKDF2 iterations ({MIN_ITERATIONS}..{MAX_ITERATIONS}, default {MIN_ITERATIONS})")
    users.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        return 130


async def run_async(args: argparse.Namespace) -> int:
    try:
        async with KafkaClient(args.bootstrap, client_id="tidelog-users", timeout=args.timeout) as client:
            if args.action == "list":
                return await _list(client, args)
            if args.action == "create":
                return await _create(client, args)
            return await _delete(client, args)
    except UsageError as e:
        return fail(PROG, e, USAGE_ERROR)
    except (ClientError, CommandError) as e:
        return fail(PROG, e)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin == (args.password is not None):
        raise UsageError("give exactly one of --password and --password-stdin")
    password: str = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else args.password
    if not password:
        raise UsageError("the password is empty")
    return password


async def describe(client: KafkaClient, names: list[str] | None) -> dict[str, list[tuple[str, int]]]:
    """user -> [(mechanism, iterations)]; CommandError for an unknown user."""
    conn = await client.any_connection()
    mod = conn.module(DESCRIBE, 0, 0)
    users = None if names is None else tuple(make(mod.UserName, name=n) for n in names)
    resp = await conn.send(make(mod.DescribeUserScramCredentialsRequest, users=users))
    if resp.error_code != ErrorCode.none:
        raise CommandError(f"{error_name(resp.error_code)}: {resp.error_message}")
    out: dict[str, list[tuple[str, int]]] = {}
    for r in resp.results:
        if r.error_code != ErrorCode.none:
            raise CommandError(f"{r.user}: {error_name(r.error_code)}: {r.error_message}")
        out[r.user] = [(MECHANISM_NAMES.get(int(c.mechanism), str(c.mechanism)), int(c.iterations))
                       for c in r.credential_infos]
    return out


async def _alter(client: KafkaClient, deletions: list[tuple[str, str]], upsertions: list[Any]) -> None:
    conn = await client.any_connection()
    mod = conn.module(ALTER, 0, 0)
    resp = await conn.send(make(
        mod.AlterUserScramCredentialsRequest,
        deletions=tuple(make(mod.ScramCredentialDeletion, name=n, mechanism=MECHANISM_IDS[m]) for n, m in deletions),
        upsertions=tuple(make(mod.ScramCredentialUpsertion, **u) for u in upsertions),
    ))
    for r in resp.results:
        if r.error_code != ErrorCode.none:
            raise CommandError(f"{r.user}: {error_name(r.error_code)}: {r.error_message}")


async def _create(client: KafkaClient, args: argparse.Namespace) -> int:
    password = _password(args)
    if not MIN_ITERATIONS <= args.iterations <= MAX_ITERATIONS:
        raise UsageError(f"--iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}")
    upserts = []
    for mechanism in dict.fromkeys(args.mechanism or ["SCRAM-SHA-512"]):
        salt = secrets.token_bytes(32)
        upserts.append({"name": args.name, "mechanism": MECHANISM_IDS[mechanism], "iterations": args.iterations,
                        "salt": salt, "salted_password": salted_password(mechanism, password, salt, args.iterations)})
    await _alter(client, [], upserts)
    mechanisms = [MECHANISM_NAMES[u["mechanism"]] for u in upserts]
    emit(args, {"user": args.name, "mechanisms": mechanisms}, f"user {args.name}: {', '.join(mechanisms)} set")
    return 0


async def _delete(client: KafkaClient, args: argparse.Namespace) -> int:
    mechanisms = list(dict.fromkeys(args.mechanism)) or [m for m, _ in (await describe(client, [args.name]))[args.name]]
    await _alter(client, [(args.name, m) for m in mechanisms], [])
    emit(args, {"user": args.name, "deleted": mechanisms}, f"user {args.name}: {', '.join(mechanisms)} deleted")
    return 0


async def _list(client: KafkaClient, args: argparse.Namespace) -> int:
    found = await describe(client, None)
    data = [{"user": u, "mechanisms": [{"mechanism": m, "iterations": i} for m, i in creds]}
            for u, creds in sorted(found.items())]
    rows = [(u, ", ".join(f"{m} ({i})" for m, i in creds)) for u, creds in sorted(found.items())]
    emit(args, data, table(("USER", "MECHANISMS (ITERATIONS)"), rows))
    return 0
