"""What partition handlers share about leadership: leader-epoch checks and KIP-951 new-leader hints.

A client that names the leader epoch it believes in (Fetch v9+, ListOffsets v4+, OffsetForLeaderEpoch v2+)
is checked as Kafka's Partition.checkCurrentLeaderEpoch does: an older epoch is FENCED_LEADER_EPOCH (its
metadata is stale), a newer one UNKNOWN_LEADER_EPOCH (this broker's is), -1 is not checked. A partition this
broker does not serve answers NOT_LEADER_OR_FOLLOWER; Produce v10+ and Fetch v12+ also say who leads now
(``current_leader``) and, in the response, how to reach it (``node_endpoints``), so a client can move
without a Metadata round trip.
"""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import RequestContext, make
from brokers.routing import Endpoint, Leader

NO_EPOCH = -1
HINTED = frozenset({ErrorCode.not_leader_or_follower, ErrorCode.fenced_leader_epoch})
"""The errors Kafka attaches a current-leader hint to."""


def epoch_error(requested: int, current: int) -> ErrorCode:
    """The error for a request naming leader epoch ``requested`` of a partition at epoch ``current``."""
    if requested == NO_EPOCH or requested == current:
        return ErrorCode.none
    return ErrorCode.fenced_leader_epoch if requested < current else ErrorCode.unknown_leader_epoch


class Hints:
    """The leaders named in one response and their endpoints (for ``node_endpoints``)."""

    __slots__ = ("_endpoints",)

    def __init__(self) -> None:
        self._endpoints: dict[int, Endpoint] = {}

    def add(self, endpoint: Endpoint | None) -> None:
        if endpoint is not None:
            self._endpoints.setdefault(endpoint.node_id, endpoint)

    def node_endpoints(self, mod: Any, ctx: RequestContext | None = None) -> tuple[Any, ...]:
        """The response's ``node_endpoints`` (empty for versions without them: ``make`` drops the field), as
        clients of ``ctx``'s listener reach them."""
        cls = getattr(mod, "NodeEndpoint", None)
        if cls is None:
            return ()
        out = []
        for _id, e in sorted(self._endpoints.items()):
            host, port = (e.host, e.port) if ctx is None else ctx.address(e)
            out.append(make(cls, node_id=e.node_id, host=host, port=port, rack=e.rack))
        return tuple(out)


def current_leader(mod: Any, leader: Leader | None) -> Any:
    """The partition's ``current_leader`` field (-1/-1 when unknown), or None for versions without it."""
    cls = getattr(mod, "LeaderIdAndEpoch", None)
    if cls is None:
        return None
    if leader is None:
        return cls()
    return cls(leader_id=leader.node_id, leader_epoch=leader.epoch)
