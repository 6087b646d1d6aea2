"""An in-memory ``Routing`` for unit tests of handlers: brokers, a controller and owners set by the test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from brokers.routing import NO_LEADER, Endpoint, Leader


@dataclass
class FakeRouting:
    """What a cluster broker's routing would say, as plain fields; ``generation`` bumps on every ``set_*``."""

    node_id: int
    endpoints: dict[int, Endpoint] = field(default_factory=dict)
    leaders: dict[tuple[str, int], Leader] = field(default_factory=dict)
    served: set[tuple[str, int]] = field(default_factory=set)
    controller: int = NO_LEADER
    generation: int = 0

    def set_leader(self, topic_id: str, partition: int, node_id: int | None, epoch: int = 0) -> None:
        key = (topic_id, partition)
        self.generation += 1
        if node_id is None:
            self.leaders.pop(key, None)
            self.served.discard(key)
            return
        self.leaders[key] = Leader(node_id, epoch)
        if node_id == self.node_id:
            self.served.add(key)
        else:
            self.served.discard(key)

    def brokers(self) -> Sequence[Endpoint]:
        return [self.endpoints[n] for n in sorted(self.endpoints)]

    def endpoint(self, node_id: int) -> Endpoint | None:
        return self.endpoints.get(node_id)

    def controller_id(self) -> int:
        return self.controller

    def leader(self, topic_id: str, partition: int) -> Leader | None:
        return self.leaders.get((topic_id, partition))

    def serving(self, topic_id: str, partition: int) -> bool:
        return (topic_id, partition) in self.served
