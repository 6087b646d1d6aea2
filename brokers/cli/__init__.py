"""The ``tidelog`` command. Each subcommand is a module with ``add_parser(subparsers)`` and ``run(args)``.

The subcommand modules are imported when the parser is built, not when the package is: brokers/verify and
the group admin import :mod:`brokers.cli.client` alone and should not pull in every subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from types import ModuleType

from brokers.observability import topic_names

# Long-running server commands: only these get the garbage collector tuned (client commands are short).
SERVERS = frozenset({"run", "broker", "bookie", "dev-cluster"})


def commands() -> tuple[ModuleType, ...]:
    """Subcommand modules, in help order. A module adds its parser and returns an exit code from run()."""
    from brokers import devcluster
    from brokers.cli import (
        acls,
        broker,
        cluster,
        configs,
        consume,
        groups,
        offload,
        produce,
        run,
        topics,
        transactions,
        users,
        verify,
    )
    from storage.bookie import cli as bookie_cli

    return (
        run, broker, topics, configs, produce, consume, groups, transactions, offload, cluster, bookie_cli, devcluster,
        users, verify, acls,
    )


def version() -> str:
    """The installed package's version (pyproject.toml), or a note that it is not installed."""
    try:
        return metadata.version("tidelog")
    except metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def _parser() -> argparse.ArgumentParser:
    from brokers.cli.common import OneLineParser

    parser = OneLineParser(prog="tidelog", description="A Kafka-compatible streaming broker.")
    parser.add_argument("--version", action="version", version=f"tidelog {version()}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in commands():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    topic_names.install()  # log lines name topics, not their ids
    if args.command in SERVERS:
        _tune_gc()
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr without a file (in tests)
            faulthandler.enable()  # a crash in native code (grpc, uvloop) leaves the threads' stacks in the log
    from brokers.config import ConfigError

    try:
        code: int = args.run(args)
    except ConfigError as e:  # a subcommand that did not catch its own bad input: still one line, exit 2
        print(f"tidelog {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tidelog consume ... | head`: the reader left; not an error worth a traceback
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    return code


def _tune_gc() -> None:
    """Servers keep many long-lived objects; full collections of them stalled produce for tens of ms.

    Objects alive after start-up are frozen out of collection, and young collections run less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


if __name__ == "__main__":
    sys.exit(main())
