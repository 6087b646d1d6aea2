"""Where partitions live: the one seam handlers ask "who leads this partition, who are the brokers?".

Handlers never import ``brokers.cluster``; they read a ``Routing`` through ``Broker.routing``. The embedded
broker's routing names itself for everything (``SingleBroker``, brokers/single_routing.py); a cluster broker's
routing is fed by etcd watches (``brokers/cluster/``). Every method is answered from memory: Metadata,
Produce and Fetch consult it on every request, so it never does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

NO_LEADER = -1


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A live broker as clients reach it (its advertised listener)."""

    node_id: int
    host: str
    port: int
    rack: str | None = None
    listeners: tuple[tuple[str, str, int], ...] = ()
    """The broker's named listeners (name, advertised host, port); empty: only ``host:port``."""

    def on(self, listener: str | None) -> tuple[str, int]:
        """Where a client of the named listener reaches this broker (its first address if it has no such name)."""
        if listener is not None:
            for name, host, port in self.listeners:
                if name == listener:
                    return host, port
        return self.host, self.port


@dataclass(frozen=True, slots=True)
class Leader:
    """The owner of a partition and its leader epoch (the partition epoch bumped by each takeover)."""

    node_id: int
    epoch: int


class Routing(Protocol):
    """The broker's view of the cluster, kept current without I/O on the request path."""

    @property
    def node_id(self) -> int:
        """This broker's node id."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever anything below may answer differently (a key for cached Metadata answers)."""
        ...

    def brokers(self) -> Sequence[Endpoint]:
        """Live brokers, sorted by node id (this broker included while it is registered)."""
        ...

    def endpoint(self, node_id: int) -> Endpoint | None:
        """A live broker's endpoint, or None."""
        ...

    def controller_id(self) -> int:
        """The controller's node id, or NO_LEADER while there is none."""
        ...

    def leader(self, topic_id: str, partition: int) -> Leader | None:
        """The partition's owner and epoch, or None while no broker owns it."""
        ...

    def serving(self, topic_id: str, partition: int) -> bool:
        """Whether this broker owns the partition and may serve it now (False once it has fenced itself)."""
        ...
