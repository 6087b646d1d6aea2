"""``tidelog bookie``: a bookie server process (journal on local disk, served over TCP).

    tidelog bookie --data-dir D --listen HOST:PORT [--advertised HOST:PORT] [--bookie-id ID] [--cluster NAME]
                   [--metadata etcd://H:P | postgresql://USER@H:P/DB | none] [--rack RACK] [--admin HOST:PORT]

Prints ``bookie ID listening on HOST:PORT`` once it serves (PORT is the bound one, so ``:0`` works). With
``--metadata etcd://...`` it registers under a lease at ``keys.bookie(ID)`` with its advertised address;
``none`` skips registration (brokers are then given bookie addresses directly). SIGTERM or SIGINT: stop
listening, deregister, finish queued journal writes, write the index checkpoint, exit 0. ``--admin``
serves Prometheus ``/metrics`` (storage/metrics.py: journal fsync latency, process CPU/RSS) for scraping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

from metadata.api import MetadataError, MetadataStore
from metadata.keys import Keys

log = logging.getLogger("tidelog.bookie")

_WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 - recognising the wildcard, not binding it


class UsageError(ValueError):
    """A command-line value that cannot be used."""


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """HOST:PORT with a port in 0..65535 (IPv6 hosts in brackets)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise UsageError(f"{what} {value!r} is not HOST:PORT")
    try:
        n = int(port)
    except ValueError:
        raise UsageError(f"{what} {value!r}: port {port!r} is not a number") from None
    if not 0 <= n <= 65535:
        raise UsageError(f"{what} {value!r}: port {n} is out of range")
    return host.strip("[]"), n


def add_parser(sub: Any) -> None:
    """Add the ``bookie`` subcommand."""
    p = sub.add_parser("bookie", help="run a bookie server (the replicated write-ahead tier)")
    p.add_argument("--data-dir", required=True, help="the bookie's directory (journal, index checkpoint, id)")
    p.add_argument("--listen", default="127.0.0.1:3181", help="HOST:PORT to serve on (port 0: any free port)")
    p.add_argument(
        "--advertised", default=None,
        help="HOST:PORT registered for clients (default: the listen host, or this machine's host name when "
        "listening on all interfaces, with the bound port)",
    )
    p.add_argument(
        "--metadata", default="none",
        help="etcd://HOST:PORT[,HOST:PORT...] to register in (every member: the client fails over), "
        "postgresql://USER@HOST:PORT/DB, or 'none'",
    )
    p.add_argument("--bookie-id", default=None, help="this bookie's id (default: the one stored, else a new one)")
    p.add_argument("--cluster", default="tidelog", help="cluster name (metadata prefix)")
    p.add_argument("--rack", default="", help="rack or zone, for placement (default: none)")
    p.add_argument("--lease-ttl", type=float, default=10.0, help="registration lease ttl in seconds")
    p.add_argument("--journal-roll-bytes", type=int, default=None, help="journal file size before rolling")
    p.add_argument(
        "--admin", default=None, metavar="HOST:PORT",
        help="serve Prometheus /metrics (journal fsync latency, process figures) on HOST:PORT (default: off)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``tidelog bookie``; returns the exit code."""
    try:
        host, port = parse_hostport(args.listen, "--listen")
        advertised = parse_hostport(args.advertised, "--advertised") if args.advertised else None
        if args.admin:
            parse_hostport(args.admin, "--admin")
        if args.metadata != "none" and not args.metadata.startswith(
            ("etcd://", "http://", "postgresql://", "postgres://")
        ):
            raise UsageError(f"--metadata {args.metadata!r}: expected etcd://HOST:PORT or none (or postgresql://...)")
        if args.lease_ttl <= 0:
            raise UsageError("--lease-ttl must be positive")
        _check_free(host, port, "--listen")  # an address in use: one line, exit 2, before the data dir is opened
        if args.admin:
            _check_free(*parse_hostport(args.admin, "--admin"), "--admin")
    except UsageError as exc:
        print(f"tidelog bookie: error: {exc}", file=sys.stderr)
        return 2
    from storage.bookie.bookie import DataDirLocked

    try:
        _run_async(serve(args, host, port, advertised))
    except (OSError, ValueError, MetadataError, DataDirLocked) as exc:
        print(f"tidelog bookie: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _check_free(host: str, port: int, what: str) -> None:
    """Raise UsageError if ``host:port`` cannot be listened on now (a trial bind, as the server will do)."""
    if port == 0:
        return
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"{what} {host}:{port}: {(e.strerror or str(e)).lower()}") from None


def _run_async(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


async def _open_store(url: str) -> MetadataStore | None:
    if url == "none":
        return None
    from metadata.open import open_store

    return await open_store(url)


async def serve(args: argparse.Namespace, host: str, port: int, advertised: tuple[str, int] | None) -> None:
    """Run the bookie until SIGTERM/SIGINT, then shut down cleanly."""
    from storage.bookie.bookie import Bookie
    from storage.bookie.registry import BookieAddress, BookieRegistration
    from storage.bookie.server import BookieServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    options: dict[str, Any] = {}
    if args.journal_roll_bytes:
        options["journal_roll_size"] = args.journal_roll_bytes
    bookie = await Bookie.open(args.data_dir, bookie_id=args.bookie_id, **options)
    server = BookieServer(bookie)
    store: MetadataStore | None = None
    registration: BookieRegistration | None = None
    try:
        bound_host, bound_port = await server.start(host, port)
        if args.admin:
            from storage.metrics import serve_metrics

            admin_host, admin_port = parse_hostport(args.admin, "--admin")
            admin_port = serve_metrics(admin_host, admin_port)
            log.info("bookie %s: /metrics on %s:%d", bookie.bookie_id, admin_host, admin_port)
        if advertised is None:
            adv_host = socket.gethostname() if host in _WILDCARDS else host
            advertised = (adv_host, bound_port)
        store = await _open_store(args.metadata)
        if store is not None:
            address = BookieAddress(bookie.bookie_id, advertised[0], advertised[1], args.rack)
            registration = BookieRegistration(store, Keys(args.cluster), address, ttl=args.lease_ttl)
            await registration.start()
        print(f"bookie {bookie.bookie_id} listening on {host}:{bound_port}", flush=True)
        log.info(
            "bookie %s serving %s on %s:%d, advertised as %s:%d, metadata %s",
            bookie.bookie_id, args.data_dir, bound_host, bound_port, advertised[0], advertised[1], args.metadata,
        )  # fmt: skip
        await stop.wait()
        log.info("bookie %s shutting down", bookie.bookie_id)
    finally:
        if registration is not None:
            await registration.stop()
        await server.stop()
        await bookie.close()
        if store is not None:
            await store.close()
        log.info("bookie %s stopped", bookie.bookie_id)
