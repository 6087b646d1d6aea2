"""``ClusterRouting``: the Routing handlers read (brokers/routing.py), answered from the cluster's watch-fed views.

* brokers / endpoints: the live registrations (``LiveBrokers``);
* controller: the elected controller as last seen (``ControllerElection.leader_id``);
* leader: the owner key of the partition and the epoch its take wrote (``OwnersView``) - clients are sent to
  the owner, and the leader epoch they see is the partition epoch every takeover bumps; an owner that is not a
  live broker in this view is no leader (LEADER_NOT_AVAILABLE), so a leader is always in the broker list;
* serving: only partitions this broker has taken *and* finished loading (the follower's set), and only while
  its session is alive: from the moment the lease is lost every partition answers NOT_LEADER_OR_FOLLOWER
  (self-fencing), before the store has told anyone else.

``generation`` changes with any of these views, so cached Metadata answers are rebuilt after a change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from brokers.cluster.assignment import TopicPartition
from brokers.cluster.controller import ControllerElection
from brokers.cluster.handover import OwnersView
from brokers.cluster.membership import LiveBrokers
from brokers.routing import NO_LEADER, Endpoint, Leader


class ClusterRouting:
    """Routing for a broker of a cluster (module docstring)."""

    def __init__(
        self,
        node_id: int,
        live: LiveBrokers,
        owners: OwnersView,
        election: ControllerElection,
        serving: Collection[TopicPartition],
        alive: Callable[[], bool],
    ) -> None:
        self._node_id = node_id
        self._live = live
        self._owners = owners
        self._election = election
        self._serving = serving
        self._alive = alive
        self._generation = 0
        self._endpoints: tuple[Endpoint, ...] | None = None
        live.add_listener(self._brokers_changed)
        owners.add_listener(self._changed)

    def _brokers_changed(self, _keys: frozenset[str]) -> None:
        self._endpoints = None
        self._generation += 1

    def _changed(self, _keys: frozenset[str] = frozenset()) -> None:
        self._generation += 1

    def bump(self) -> None:
        """Something answered here changed (the serving set, the session, the controller)."""
        self._generation += 1

    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def generation(self) -> int:
        controller = self._election.leader_id
        return self._generation * 4 + (2 if self._alive() else 0) + (0 if controller is None else 1) + (
            (controller or 0) << 40
        )

    def brokers(self) -> Sequence[Endpoint]:
        endpoints = self._endpoints
        if endpoints is None:
            endpoints = tuple(
                Endpoint(r.node_id, r.host, r.port, r.rack, r.listeners) for _, r in sorted(self._live.brokers.items())
            )
            self._endpoints = endpoints
        return endpoints

    def endpoint(self, node_id: int) -> Endpoint | None:
        for endpoint in self.brokers():
            if endpoint.node_id == node_id:
                return endpoint
        return None

    def controller_id(self) -> int:
        leader = self._election.leader_id
        return NO_LEADER if leader is None else leader

    def leader(self, topic_id: str, partition: int) -> Leader | None:
        owner = self._owners.owner_of(topic_id, partition)
        if owner is None or owner.node_id not in self._live.brokers:  # memoized per change (CacheView)
            # An owner not (or no longer) among the live brokers: its registration and owner keys go with the
            # same lease but arrive by separate watches. Naming a leader missing from the broker list is what
            # Kafka never does (librdkafka: "new leader not found in cache"); no leader, retriable, until both agree.
            return None
        return Leader(owner.node_id, owner.epoch)

    def serving(self, topic_id: str, partition: int) -> bool:
        return (topic_id, partition) in self._serving and self._alive()
