"""``tidelog broker``: one broker of a cluster (metadata on etcd, ledgers on the registered bookies, sealed
ledgers in a shared object store). It keeps no data of its own: partitions are taken and released as the
controller assigns them (brokers/clustered.py).

    tidelog broker --metadata etcd://H:P[,H:P...] --object-store URL --listen HOST:PORT --advertised HOST:PORT
    tidelog broker --metadata postgresql://USER@HOST:PORT/DB ...   (PostgreSQL instead of etcd)
                   [--node-id N] [--cluster NAME] [--admin HOST:PORT] [--config K=V ...] [--cache-dir D]

Bad arguments exit 2 with one line on stderr, as ``tidelog run``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from brokers.cli.run import run_async
from brokers.config import INT32_MAX, BrokerConfig, ConfigError, parse_hostport
from storage.objectstore.options import add_s3_arguments, object_store_url

CLUSTER_ENSEMBLE = (3, 3, 2)
"""Ledger ensemble size, write quorum, ack quorum of a cluster (ledgers go on fewer bookies while fewer are
live: brokers/log/ensemble.py)."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("broker", help="run one broker of a cluster (metadata on etcd, ledgers on bookies)")
    p.add_argument(
        "--metadata", required=True, metavar="etcd://H:P[,H:P...]|postgresql://U@H:P/DB",
        help="the etcd endpoints, or a PostgreSQL database (metadata/postgres.py)",
    )
    p.add_argument(
        "--object-store", required=True, metavar="URL",
        help="shared store of sealed ledgers: s3://bucket/prefix?endpoint=...&region=..., file:///dir, a directory",
    )
    add_s3_arguments(p)
    p.add_argument("--listen", required=True, help="HOST:PORT to accept Kafka clients on")
    p.add_argument("--advertised", required=True, help="HOST:PORT clients and other brokers are told to use")
    p.add_argument("--node-id", type=int, default=None, help="this broker's node id (default: allocated, > 1000)")
    p.add_argument("--cluster", default="tidelog", help="cluster name (metadata prefix)")
    p.add_argument("--admin", default="", metavar="HOST:PORT", help="serve GET /metrics over HTTP here")
    p.add_argument(
        "--config", "-c", action="append", default=[], metavar="KEY=VALUE",
        help="a broker setting, e.g. broker.session.timeout.ms=6000 (repeatable)",
    )
    p.add_argument("--cache-dir", default="", metavar="DIR", help="scratch space (nothing in it must survive)")
    p.set_defaults(run=run_command)


def metadata_endpoints(value: str) -> list[str]:
    """``etcd://H:P[,H:P...]`` as one ``etcd://H:P`` URL per endpoint; a ``postgresql://`` URL as itself."""
    scheme, sep, rest = value.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        if not urlsplit(value).hostname:
            raise ConfigError(f"--metadata {value!r}: expected postgresql://USER@HOST:PORT/DATABASE")
        return [value]
    if not sep or scheme not in ("etcd", "http"):
        raise ConfigError(
            f"--metadata {value!r}: expected etcd://HOST:PORT[,HOST:PORT...] or postgresql://USER@HOST:PORT/DATABASE"
        )
    urls = []
    for part in rest.split(","):
        host, port = parse_hostport(part.strip().rstrip("/"), "--metadata")
        if not host or port == 0:
            raise ConfigError(f"--metadata {value!r}: {part!r} is not HOST:PORT")
        urls.append(f"etcd://{host}:{port}")
    return urls


def _check_object_store(url: str) -> None:
    if not url.strip():
        raise ConfigError("--object-store must name a store shared by every broker (s3://... or a directory)")
    if "://" in url:
        scheme = urlsplit(url).scheme
        if scheme not in ("s3", "file", "memory"):
            raise ConfigError(f"--object-store {url!r}: unknown scheme {scheme!r} (s3://, file://)")
        if scheme == "memory":
            raise ConfigError("--object-store memory:// is not shared between brokers; use s3:// or a directory")


def build_config(args: argparse.Namespace) -> tuple[BrokerConfig, list[str]]:
    """The broker config and the etcd endpoints; raises ConfigError with a clear message."""
    endpoints = metadata_endpoints(args.metadata)
    host, port = parse_hostport(args.listen, "--listen")
    adv_host, adv_port = parse_hostport(args.advertised, "--advertised")
    if not adv_host or adv_host in ("0.0.0.0", "::") or adv_port == 0:  # noqa: S104 - refusing the wildcard
        raise ConfigError(f"--advertised {args.advertised!r} must be a host and port clients can reach")
    if args.node_id is not None and not 0 <= args.node_id <= INT32_MAX:
        raise ConfigError(f"--node-id {args.node_id} must be between 0 and {INT32_MAX} (an int32, as in Kafka)")
    if args.admin:
        parse_hostport(args.admin, "--admin")
    _check_object_store(args.object_store)
    try:
        object_store = object_store_url(args)  # --s3-region / --s3-endpoint folded into the s3:// URL
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    e, qw, qa = CLUSTER_ENSEMBLE
    config = BrokerConfig(
        data_dir=os.path.abspath(args.cache_dir) if args.cache_dir else "", host=host, port=port,
        advertised_host=adv_host, advertised_port=adv_port, node_id=args.node_id or 0, cluster=args.cluster,
        object_store=object_store, ledger_ensemble_size=e, ledger_write_quorum=qw, ledger_ack_quorum=qa,
        admin_listen=args.admin.strip(),
    )
    from brokers.cli.run import with_listeners

    config = with_listeners(config.with_overrides(args.config))
    e, qw, qa = config.ledger_ensemble_size, config.ledger_write_quorum, config.ledger_ack_quorum
    if not e >= qw >= qa >= 1:
        raise ConfigError(
            f"need ledger.ensemble.size >= ledger.write.quorum >= ledger.ack.quorum >= 1, got {e}/{qw}/{qa}"
        )
    if config.num_partitions > config.max_partitions_per_topic:
        raise ConfigError(
            f"num.partitions={config.num_partitions} exceeds max.partitions.per.topic={config.max_partitions_per_topic}"
        )
    return config, endpoints


def run_command(args: argparse.Namespace) -> int:
    from brokers.cli.startup import check_listen

    try:
        config, endpoints = build_config(args)
        check_listen(config.host, config.port, "--listen")  # in use: one line, exit 2, before anything starts
        if config.admin_listen:
            check_listen(*parse_hostport(config.admin_listen, "--admin"), "--admin")
    except ConfigError as e:
        print(f"tidelog broker: error: {e}", file=sys.stderr)
        return 2
    from brokers.clustered import ClusterStartError, run_clustered

    try:
        run_async(run_clustered(config, endpoints, node_id=args.node_id))
    except (ConfigError, ClusterStartError, OSError) as e:
        print(f"tidelog broker: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
