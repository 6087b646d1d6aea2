"""Readiness of a broker, and the admin server that answers for it (``/healthz``, ``/readyz``, ``/metrics``).

Why: an orchestrator must tell "restart me" (the process is wedged: ``/healthz`` stops answering) from "send
me no traffic" (``/readyz`` 503: the Kafka listener is not up yet, or, in a cluster, the membership lease is
not alive — etcd unreachable or the lease lost, so this broker may own nothing). The composition roots
(brokers/embedded.py, brokers/clustered.py) build their admin server here so both answer the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from brokers.admin_http import AdminServer
from brokers.listener import Listener
from brokers.metrics import collect
from brokers.observability import cluster_metrics, process
from brokers.observability.groups import GroupLag
from brokers.observability.memory import MemoryCollector, collect_memory
from brokers.server import KafkaServer

if TYPE_CHECKING:
    from brokers.broker import Broker


def readiness(kafka: Listener, lease_alive: Callable[[], bool] | None = None) -> Callable[[], str | None]:
    """A check for ``/readyz``: None while ``kafka`` listens and (in a cluster) the lease is alive."""

    def ready() -> str | None:
        if not kafka.listening:
            return "the Kafka listener is not up"
        if lease_alive is not None and not lease_alive():
            return "no live cluster membership lease (metadata store unreachable, or the lease was lost)"
        return None

    return ready


def admin_server(broker: Broker, kafka: Listener, lease_alive: Callable[[], bool] | None = None) -> AdminServer:
    """The admin HTTP server of ``broker``: its figures with consumer-group lag and memory, and its readiness."""
    process.install()
    cluster_metrics.register()  # exported from the start (0), also before brokers/cluster/ first calls a hook
    lag = GroupLag(broker)
    server = AdminServer(lambda: collect(broker, lag), ready=readiness(kafka, lease_alive), on_stop=lag.close)
    if isinstance(kafka, KafkaServer):
        responses, trimmer = kafka.response_memory, kafka.idle_trimmer
        server.register(MemoryCollector(lambda: collect_memory(broker, lambda: responses.used, lambda: trimmer.heap)))
    else:
        server.register(MemoryCollector(lambda: collect_memory(broker)))
    return server
