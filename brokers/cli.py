"""The ``tidelog`` command. Each subcommand is a module with ``add_parser(subparsers)`` and ``run(args)``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from brokers import cli_run

# Subcommand modules, in help order. A module adds its parser and returns an exit code from run().
COMMANDS: tuple[ModuleType, ...] = (cli_run,)


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
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
