"""The embedded broker's routing: it is the only broker, the controller, and the leader of every partition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from brokers.routing import Endpoint, Leader

if TYPE_CHECKING:
    from brokers.broker import Broker

NOT_LOADED_EPOCH = -1
"""The leader epoch reported for a partition whose log is not loaded yet (unknown: clients skip epoch checks)."""


class SingleBroker:
    """``Routing`` for ``tidelog run``: everything is here, and every partition is served (loaded on first use).

    ``generation`` never changes: no partition ever changes hands. The one thing that does change, a leader
    epoch when a log is loaded, follows ``LogManager.generation`` / ``topic_generation``, which Metadata's
    caches are keyed by as well (so loading one partition re-encodes only its topic, not every topic).
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    @property
    def node_id(self) -> int:
        return self._broker.config.node_id

    @property
    def generation(self) -> int:
        return 0

    def _self(self) -> Endpoint:
        host, port = self._broker.config.advertised
        return Endpoint(self._broker.config.node_id, host, port)

    def brokers(self) -> Sequence[Endpoint]:
        return (self._self(),)

    def endpoint(self, node_id: int) -> Endpoint | None:
        return self._self() if node_id == self._broker.config.node_id else None

    def controller_id(self) -> int:
        return self._broker.config.node_id

    def leader(self, topic_id: str, partition: int) -> Leader | None:
        plog = self._broker.logs.loaded(topic_id, partition)
        return Leader(self._broker.config.node_id, NOT_LOADED_EPOCH if plog is None else plog.epoch)

    def serving(self, topic_id: str, partition: int) -> bool:
        return True
