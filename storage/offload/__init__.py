"""Offload of closed ledgers to object storage, orphan GC and retention of segments.

``Offloader`` (one per broker) turns closed ledgers into segment objects and commits them; it changes
partition state through a ``PartitionStateAccess`` (the owning partition log's, or ``StoreStateAccess``).
``retention`` plans and applies the deletion of whole segments.
"""

from __future__ import annotations

from storage.offload.backlog import OffloadBacklog
from storage.offload.gc import collect_orphans
from storage.offload.offloader import STEPS, OffloadConfig, Offloader, OffloadError, OffloadStats
from storage.offload.retention import RetentionPlan, RetentionResult, apply_retention, plan_retention
from storage.offload.state import PartitionMoved, PartitionStateAccess, StateChange, StoreStateAccess

__all__ = [
    "STEPS",
    "OffloadBacklog",
    "OffloadConfig",
    "OffloadError",
    "OffloadStats",
    "Offloader",
    "PartitionMoved",
    "PartitionStateAccess",
    "RetentionPlan",
    "RetentionResult",
    "StateChange",
    "StoreStateAccess",
    "apply_retention",
    "collect_orphans",
    "plan_retention",
]
