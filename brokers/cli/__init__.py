"""The ``tidelog`` command. Each subcommand is a module with ``add_parser(subparsers)`` and ``run(args)``.

The subcommand modules are imported when the parser is built, not when the package is: brokers/verify and
the group admin import :mod:`brokers.cli.client` alone and should not pull in every subcommand.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from types import ModuleType


def commands() -> tuple[ModuleType, ...]:
    """Subcommand modules, in help order. A module adds its parser and returns an exit code from run()."""
    from brokers import devcluster
    from brokers.cli import broker, cluster, groups, offload, run, verify
    from storage.bookie import cli as bookie_cli

    return (run, broker, groups, offload, cluster, bookie_cli, devcluster, verify)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidelog", description="A Kafka-compatible streaming broker.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in commands():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _tune_gc()
    code: int = args.run(args)
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
