"""``tidelog run``: the embedded broker (broker, in-process bookie, metadata store, object store)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any

from brokers.config import BrokerConfig, ConfigError, parse_hostport


def add_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run the embedded broker (broker, bookie, metadata, object store)")
    run.add_argument("--data-dir", default="./data", help="where everything is kept (default ./data)")
    run.add_argument("--listen", default="127.0.0.1:9092", help="HOST:PORT to accept Kafka clients on")
    run.add_argument("--advertised", default=None, help="HOST:PORT clients are told to use")
    run.add_argument("--node-id", type=int, default=0, help="this broker's node id (default 0)")
    run.add_argument("--cluster", default="tidelog", help="cluster name (metadata prefix)")
    run.add_argument(
        "--config", "-c", action="append", default=[], metavar="KEY=VALUE",
        help="a broker setting, e.g. ledger.rollover.bytes=1048576 (repeatable)",
    )
    run.set_defaults(run=run_command)


def build_config(args: argparse.Namespace) -> BrokerConfig:
    """The broker config from parsed arguments; raises ConfigError with a clear message."""
    host, port = parse_hostport(args.listen, "--listen")
    adv_host, adv_port = parse_hostport(args.advertised, "--advertised") if args.advertised else ("", 0)
    if args.node_id < 0:
        raise ConfigError(f"--node-id {args.node_id} must not be negative")
    config = BrokerConfig(
        data_dir=os.path.abspath(args.data_dir), host=host, port=port,
        advertised_host=adv_host, advertised_port=adv_port, node_id=args.node_id, cluster=args.cluster,
    )
    return config.with_overrides(args.config)


def run_async(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop when it is there."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable without it
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def run_command(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
    except ConfigError as e:
        print(f"tidelog: error: {e}", file=sys.stderr)
        return 2
    from brokers.embedded import DataDirLocked, run_embedded

    try:
        run_async(run_embedded(config))
    except (DataDirLocked, OSError) as e:
        print(f"tidelog: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
