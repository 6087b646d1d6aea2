"""Partition ownership figures: partitions owned, moves, failovers and takeover times.

Why: in a cluster a partition changes owner when the controller moves it (rebalance, drain) or when its owner's
lease is lost (failover); how often, and how long a takeover pauses the partition, is what an operator
watches. brokers/cluster/ calls the two hooks below; they only touch counters (no I/O, never raise).
Kafka's counterparts: kafka.server:type=ReplicaManager,name=PartitionCount and LeaderCount,
kafka.controller:type=ControllerStats,name=LeaderElectionRateAndTimeMs, UncleanLeaderElectionsPerSec.
"""

from __future__ import annotations

import threading
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

TakeoverReason = Literal["move", "failover", "restart", "start"]
"""Why this broker took a partition (brokers/cluster/follower.py's ``Takeover.reason``): its owner released it to
this broker (move), its owner's session ended without a release (failover), this broker owned it before its
own restart (restart), or it had no owner (start: a new partition, a cluster starting)."""

TAKEOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

PARTITIONS_OWNED = Gauge("tidelog_partitions_owned", "Partitions this broker owns (serves) now.")
MOVES = Counter("tidelog_partition_moves", "Partitions this broker took over by a controller move.")
FAILOVERS = Counter(
    "tidelog_partition_failovers", "Partitions this broker took over after their previous owner's lease was lost."
)
TAKEOVER_SECONDS = Histogram(
    "tidelog_partition_takeover_seconds",
    "For a move or failover: from the previous owner's key going to serving the partition here (the pause clients "
    "see, ledger recovery included); for a start or restart: the take and load. By reason.",
    ["reason"], buckets=TAKEOVER_BUCKETS,
)  # fmt: skip
_REASONS: frozenset[str] = frozenset({"move", "failover", "restart", "start"})
_owned: set[tuple[str, int]] = set()
_lock = threading.Lock()


def partition_taken(topic: str, partition: int, reason: TakeoverReason, seconds: float) -> None:
    """This broker serves ``topic``/``partition`` from now on, after ``seconds`` of takeover.

    ``reason`` is "move", "failover", "restart" or "start" (anything else counts as "start"). Taking a partition already
    counted as owned changes no gauge (idempotent), but the takeover is still counted and timed."""
    why = reason if reason in _REASONS else "start"
    with _lock:
        _owned.add((topic, partition))
        PARTITIONS_OWNED.set(len(_owned))
    if why == "move":
        MOVES.inc()
    elif why == "failover":
        FAILOVERS.inc()
    TAKEOVER_SECONDS.labels(why).observe(max(0.0, seconds))


def partition_released(topic: str, partition: int) -> None:
    """This broker no longer serves ``topic``/``partition`` (moved away, deposed, or shutting down).
    Releasing one not owned is a no-op."""
    with _lock:
        _owned.discard((topic, partition))
        PARTITIONS_OWNED.set(len(_owned))


def register() -> None:
    """Nothing to do: importing this module registers its series. Called by the admin server's builder so the
    import is not an unused one."""


def owned() -> int:
    """Partitions counted as owned now (for tests and /readyz details)."""
    with _lock:
        return len(_owned)
