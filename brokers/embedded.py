"""Embedded mode: one process holding a broker, the embedded metadata store and a local-directory object
store, with either an in-process bookie (the default) or, with ``--bookies N``, N local bookie server
processes reached over TCP — the same classes the cluster uses.

Data directory layout: ``metadata/`` (MetadataStore), ``bookie/`` (the in-process bookie's journal) or
``bookie-K/`` + ``bookie-K.log`` + ``bookies.json`` (local bookie processes, brokers/local_bookies.py),
``objects/`` (ObjectStore, unless ``--object-store URL`` names another, e.g. S3), ``LOCK`` (held while
running, so two processes never share one directory).
A data directory keeps the mode it was created with: its ledgers live on those bookies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from brokers.bookie_liveness import BookieLiveness
from brokers.broker import Broker
from brokers.cli.startup import settle_gc
from brokers.config import BrokerConfig, ConfigError, parse_hostport
from brokers.kafka_listeners import KafkaListeners
from brokers.local_bookies import STATE_FILE, LocalBookies, LocalBookiesError
from brokers.observability.health import admin_server
from metadata.dirlock import DirectoryLocked, lock_directory
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie.bookie import Bookie
from storage.bookie.protocol import LocalBookieClient
from storage.bookie.tcp_client import TcpBookieClient
from storage.ledger.client import QuorumLedgerClient
from storage.ledger.placement import placement_named
from storage.objectstore import open_object_store

log = logging.getLogger("tidelog")


BOOKIES_START_TIMEOUT = 60.0


DataDirLocked = DirectoryLocked  # the name callers catch


class DataDirMode(RuntimeError):
    """The data directory was created in the other bookie mode."""


def _lock(data_dir: Path) -> int:
    return lock_directory(data_dir, "Tidelog process")


def _check_mode(data_dir: Path, bookies: int) -> None:
    """Refuse to open a data directory in the other bookie mode than it was created with."""
    if bookies and (data_dir / "bookie" / "bookie_id").exists():
        raise DataDirMode(
            f"{data_dir} holds an in-process bookie's ledgers; run it without --bookies (or use a new --data-dir)"
        )
    if not bookies and (data_dir / STATE_FILE).exists():
        raise DataDirMode(f"{data_dir} was run with --bookies; run it with --bookies again (or use a new --data-dir)")


class _Bookies:
    """The write-ahead tier of an embedded broker: one in-process bookie, or local bookie processes."""

    def __init__(self, config: BrokerConfig, data_dir: Path, store: EmbeddedMetadataStore) -> None:
        self._config = config
        self._data_dir = data_dir
        self.ledgers = QuorumLedgerClient(
            store, Keys(config.cluster), {}, placement=placement_named(config.ledger_placement)
        )
        self._bookie: Bookie | None = None
        self._local: LocalBookies | None = None
        self._liveness: BookieLiveness | None = None
        self._clients: list[TcpBookieClient] = []

    async def start(self) -> None:
        config = self._config
        if not config.bookies:
            self._bookie = await Bookie.open(
                self._data_dir / "bookie",
                journal_roll_size=config.bookie_journal_roll_bytes,
                reserve_bytes=config.disk_reserve_bytes,
            )
            self.ledgers.add_bookie(LocalBookieClient(self._bookie))
            return
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self._local = LocalBookies(
            self._data_dir, config.bookies, restart_ms=config.bookie_restart_ms, log_level=str(level)
        )
        await self._local.start()
        self._clients = self._local.clients()
        self._liveness = BookieLiveness(self.ledgers, self._clients)
        await self._liveness.start()
        try:
            async with asyncio.timeout(BOOKIES_START_TIMEOUT):
                await self._liveness.wait_for(config.bookies)
        except TimeoutError:
            raise LocalBookiesError(
                f"only {len(self._liveness.live)} of {config.bookies} bookies answered within "
                f"{BOOKIES_START_TIMEOUT:.0f}s; see {self._data_dir}/bookie-*.log"
            ) from None
        log.info("%d bookie processes live: %s", config.bookies, ", ".join(sorted(self._liveness.live)))

    async def stop(self) -> None:
        await self.ledgers.close()
        if self._liveness is not None:
            await self._liveness.stop()
        for client in self._clients:
            await client.close()
        if self._local is not None:
            await self._local.stop()
        if self._bookie is not None:
            await self._bookie.close()


async def run_embedded(config: BrokerConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or cancellation), then shut down cleanly."""
    data_dir = Path(config.data_dir)  # made absolute by the CLI
    lock_fd = _lock(data_dir)
    try:
        _check_mode(data_dir, config.bookies)
    except DataDirMode:
        os.close(lock_fd)
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    store = await EmbeddedMetadataStore.open(data_dir / "metadata", reserve_bytes=config.disk_reserve_bytes)
    try:
        objects = open_object_store(config.object_store or str(data_dir / "objects"))
    except ValueError as e:
        await store.close()
        os.close(lock_fd)
        raise ConfigError(f"--object-store: {e}") from None
    bookies = _Bookies(config, data_dir, store)
    broker = Broker(config, store, bookies.ledgers, objects)
    listeners = KafkaListeners(broker)
    server = listeners.primary
    admin = admin_server(broker, server)
    try:
        await bookies.start()
        await broker.start()
        if config.admin_listen:
            admin_host, admin_port = parse_hostport(config.admin_listen, "admin.listen")
            try:
                admin_port = await admin.start(admin_host, admin_port)
            except OSError as e:
                raise ConfigError(f"admin.listen {config.admin_listen}: {e}") from None
            log.info("admin HTTP (/metrics, /v1/offload, /healthz, /readyz) on %s:%d", admin_host, admin_port)
        port = (await listeners.start())[0]
        log.info("listening on %s:%d (data in %s)", config.host, port, data_dir)
        settle_gc()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
    finally:
        await admin.stop()
        await listeners.stop()
        await broker.stop()
        await bookies.stop()
        await objects.close()
        await store.close()
        os.close(lock_fd)
        log.info("stopped")
