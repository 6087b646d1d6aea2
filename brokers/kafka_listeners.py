"""The broker's Kafka listeners (``listeners``, or the one PLAINTEXT ``--listen``): one KafkaServer each."""

from __future__ import annotations

import logging

from brokers.broker import Broker
from brokers.config import ConfigError
from brokers.security.listeners import check_security
from brokers.security.tls import secret_file_warnings
from brokers.server import KafkaServer

log = logging.getLogger("tidelog")


class KafkaListeners:
    """Every Kafka listener of one broker; ``primary`` is the first (health checks watch it)."""

    def __init__(self, broker: Broker) -> None:
        specs = check_security(broker.config)
        if any(s.tls for s in specs):
            for warning in secret_file_warnings(broker.config):
                log.warning("%s", warning)
        if not broker.config.listeners:  # the plain --listen listener: no named listener, nothing to check
            self.servers = [KafkaServer(broker)]
        else:
            self.servers = [KafkaServer(broker, spec) for spec in specs]
        self._specs = specs

    @property
    def advertised(self) -> tuple[tuple[str, str, int], ...]:
        """(name, advertised host, port) of each named listener, for the cluster registration; () without
        ``listeners`` (the registration's one address is all there is)."""
        if not self.servers[0].listener:
            return ()
        return tuple((s.name, s.advertised_host, s.advertised_port) for s in self._specs)

    @property
    def primary(self) -> KafkaServer:
        return self.servers[0]

    async def start(self) -> list[int]:
        """Listen on each; the bound ports, in order. ConfigError naming the listener that cannot bind."""
        ports = []
        for spec, server in zip(self._specs, self.servers, strict=True):
            try:
                port = await server.start(spec.host, spec.port)
            except OSError as e:
                raise ConfigError(f"listener {spec.name} {spec.host}:{spec.port}: {e}") from None
            if server.listener is not None:
                log.info("listener %s (%s) on %s:%d, advertised %s:%d", spec.name, spec.protocol, spec.host,
                         port, spec.advertised_host, spec.advertised_port)
            ports.append(port)
        return ports

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
