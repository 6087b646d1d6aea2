"""The ``tidelog`` command. Each subcommand is a module with ``add_parser(subparsers)`` and ``run(args)``."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from brokers import cli_broker, cli_cluster, cli_groups, cli_offload, cli_run, cli_verify, devcluster
from storage.bookie import cli as bookie_cli

# Subcommand modules, in help order. A module adds its parser and returns an exit code from run().
COMMANDS: tuple[ModuleType, ...] = (
    cli_run, cli_broker, cli_groups, cli_offload, cli_cluster, bookie_cli, devcluster, cli_verify,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidelog", description="A Kafka-compatible streaming broker.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
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
