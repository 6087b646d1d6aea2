"""Embedded mode: one process holding a broker, an in-process bookie, the embedded metadata store and a
local-directory object store — the same classes the cluster uses, wired in-process.

Data directory layout: ``metadata/`` (MetadataStore), ``bookie/`` (journal), ``objects/`` (ObjectStore),
``LOCK`` (held while running, so two processes never share one directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from pathlib import Path

from brokers.broker import Broker
from brokers.config import BrokerConfig
from brokers.server import KafkaServer
from metadata.embedded import EmbeddedMetadataStore
from metadata.keys import Keys
from storage.bookie.bookie import Bookie
from storage.bookie.protocol import LocalBookieClient
from storage.ledger.client import QuorumLedgerClient
from storage.objectstore import open_object_store

log = logging.getLogger("tidelog")


class DataDirLocked(RuntimeError):
    """Another process is using the data directory."""


def _lock(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(f"{data_dir} is in use by another Tidelog process") from None
    return fd


async def run_embedded(config: BrokerConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or cancellation), then shut down cleanly."""
    data_dir = Path(config.data_dir)  # made absolute by the CLI
    lock_fd = _lock(data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    store = await EmbeddedMetadataStore.open(data_dir / "metadata")
    bookie = await Bookie.open(data_dir / "bookie")
    objects = open_object_store(str(data_dir / "objects"))
    local = LocalBookieClient(bookie)
    ledgers = QuorumLedgerClient(store, Keys(config.cluster), {local.bookie_id: local})
    broker = Broker(config, store, ledgers)
    server = KafkaServer(broker)
    try:
        await broker.start()
        port = await server.start(config.host, config.port)
        log.info("listening on %s:%d (data in %s)", config.host, port, data_dir)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()
        await broker.stop()
        await ledgers.close()
        await bookie.close()
        await objects.close()
        await store.close()
        os.close(lock_fd)
        log.info("stopped")
