"""``tidelog run``: the embedded broker (broker, in-process bookie or ``--bookies N`` local bookie processes,
metadata store, object store)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any

from brokers.config import INT32_MAX, BrokerConfig, ConfigError, parse_hostport
from storage.objectstore.options import add_s3_arguments, object_store_url

MAX_LOCAL_BOOKIES = 16


def add_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run the embedded broker (broker, bookie, metadata, object store)")
    run.add_argument("--data-dir", default="./data", help="where everything is kept (default ./data)")
    run.add_argument("--listen", default="127.0.0.1:9092", help="HOST:PORT to accept Kafka clients on")
    run.add_argument("--advertised", default=None, help="HOST:PORT clients are told to use")
    run.add_argument("--node-id", type=int, default=0, help="this broker's node id (default 0)")
    run.add_argument("--cluster", default="tidelog", help="cluster name (metadata prefix)")
    run.add_argument(
        "--bookies", type=int, default=0, metavar="N",
        help="run N local bookie processes (replicated write-ahead tier; ledgers 3/3/2 with N >= 3) "
        "instead of the in-process bookie",
    )
    run.add_argument(
        "--object-store", default="", metavar="URL",
        help="where sealed ledgers are offloaded: a directory, file:///dir, memory:// or "
        "s3://bucket/prefix?endpoint=...&region=... (default: DATA/objects)",
    )
    add_s3_arguments(run)
    run.add_argument(
        "--admin", default="", metavar="HOST:PORT",
        help="serve GET /metrics (Prometheus) and /v1/offload (JSON) over HTTP here (config admin.listen; "
        "default off)",
    )
    run.add_argument(
        "--config", "-c", action="append", default=[], metavar="KEY=VALUE",
        help="a broker setting, e.g. ledger.rollover.bytes=1048576 (repeatable)",
    )
    run.set_defaults(run=run_command)


def build_config(args: argparse.Namespace) -> BrokerConfig:
    """The broker config from parsed arguments; raises ConfigError with a clear message."""
    host, port = parse_hostport(args.listen, "--listen")
    adv_host, adv_port = parse_hostport(args.advertised, "--advertised") if args.advertised else ("", 0)
    if not 0 <= args.node_id <= INT32_MAX:
        raise ConfigError(f"--node-id {args.node_id} must be between 0 and {INT32_MAX} (an int32, as in Kafka)")
    if not 0 <= args.bookies <= MAX_LOCAL_BOOKIES:
        raise ConfigError(f"--bookies {args.bookies} must be between 0 and {MAX_LOCAL_BOOKIES}")
    if args.admin:
        parse_hostport(args.admin, "--admin")
    try:
        object_store = object_store_url(args)  # --s3-region / --s3-endpoint folded into the s3:// URL
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ensemble = min(args.bookies, 3) if args.bookies else 1  # the cluster default 3/3/2, embedded 1/1/1
    config = BrokerConfig(
        data_dir=os.path.abspath(args.data_dir), host=host, port=port,
        advertised_host=adv_host, advertised_port=adv_port, node_id=args.node_id, cluster=args.cluster,
        bookies=args.bookies, object_store=object_store, ledger_ensemble_size=ensemble,
        ledger_write_quorum=ensemble, ledger_ack_quorum=min(ensemble, 2), admin_listen=args.admin.strip(),
    )
    config = with_listeners(config.with_overrides(args.config))
    _check_quorums(config)
    _check_limits(config)
    return config


def with_listeners(config: BrokerConfig) -> BrokerConfig:
    """Check the security settings; with ``listeners`` set, the first listener replaces ``--listen`` (it is the
    address registered for the broker)."""
    from dataclasses import replace

    from brokers.security.listeners import check_security

    specs = check_security(config)
    if not config.listeners:
        return config
    first = specs[0]
    return replace(config, host=first.host, port=first.port, advertised_host=first.advertised_host,
                   advertised_port=first.advertised_port)


def _check_limits(config: BrokerConfig) -> None:
    """Topics the broker creates itself must fit its own limits."""
    if config.num_partitions > config.max_partitions_per_topic:
        raise ConfigError(
            f"num.partitions={config.num_partitions} exceeds max.partitions.per.topic={config.max_partitions_per_topic}"
        )
    if config.offsets_topic_num_partitions > config.max_partitions_per_broker:
        raise ConfigError(
            f"offsets.topic.num.partitions={config.offsets_topic_num_partitions} exceeds "
            f"max.partitions.per.broker={config.max_partitions_per_broker}"
        )


def _check_quorums(config: BrokerConfig) -> None:
    e, qw, qa = config.ledger_ensemble_size, config.ledger_write_quorum, config.ledger_ack_quorum
    if not e >= qw >= qa >= 1:
        raise ConfigError(
            f"need ledger.ensemble.size >= ledger.write.quorum >= ledger.ack.quorum >= 1, got {e}/{qw}/{qa}"
        )
    available = max(config.bookies, 1)
    if e > available:
        where = f"--bookies {config.bookies}" if config.bookies else "the in-process bookie (use --bookies N)"
        raise ConfigError(f"ledger.ensemble.size={e} needs {e} bookies; {where} gives {available}")


def run_async(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop when it is there, with glibc's malloc arenas capped (brokers/memory.py)."""
    from brokers.memory import limit_arenas

    limit_arenas()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable without it
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def run_command(args: argparse.Namespace) -> int:
    """Exit 2 for what the user can fix (arguments, configs, an address in use, a data directory in use or of
    the other mode), 1 for other failures; a start-up that fails leaves the data directory as it was."""
    from brokers.cli.startup import DataDirGuard, check_listen, describe_os_error, is_usage_error

    try:
        config = build_config(args)
        check_listen(config.host, config.port, "--listen")
        from brokers.security.listeners import listeners_of

        for spec in listeners_of(config)[1:]:
            check_listen(spec.host, spec.port, f"listener {spec.name}")
        if config.admin_listen:
            check_listen(*parse_hostport(config.admin_listen, "--admin"), "--admin")
    except ConfigError as e:
        print(f"tidelog: error: {e}", file=sys.stderr)
        return 2
    from brokers.embedded import DataDirLocked, DataDirMode, run_embedded
    from brokers.local_bookies import LocalBookiesError

    guard = DataDirGuard.before_start(config.data_dir)
    ready = asyncio.Event()
    try:
        run_async(run_embedded(config, ready))
    except BaseException as e:
        if not ready.is_set() and not isinstance(e, DataDirLocked):  # locked: another process's directory
            guard.undo()
        if isinstance(e, KeyboardInterrupt):
            return 130
        if isinstance(e, (ConfigError, DataDirLocked, DataDirMode)):
            print(f"tidelog: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):
            where = f"{config.host}:{config.port}: " if is_usage_error(e) else ""
            print(f"tidelog: error: {where}{describe_os_error(e)}", file=sys.stderr)
            return 2 if is_usage_error(e) else 1
        if isinstance(e, LocalBookiesError):
            print(f"tidelog: error: {e}", file=sys.stderr)
            return 1
        raise
    return 0
