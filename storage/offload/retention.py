"""Retention of offloaded data: which whole segments to delete, and deleting them (metadata first).

``plan_retention`` is pure and follows Kafka's rules, oldest segment first:

* ``retention.ms`` (-1: forever): delete while ``now - segment.max_timestamp > retention_ms``; stop at the
  first segment that is young enough.
* ``retention.bytes`` (-1: unlimited): with ``total`` = bytes in segments + bytes not offloaded yet, delete
  while ``total - segment.data_length >= retention_bytes``.
* log start offset (DeleteRecords, or an earlier move): delete every segment wholly below it.

The new log start offset is the largest of the current one, the DeleteRecords offset and the offset after
the last deleted segment. Only segments are deleted; data still in ledgers waits for offload (the partition
log's ``advance_start`` drops ledgers below a DeleteRecords offset).

``apply_retention`` removes the segment keys and moves the log start offset in atomic commits (oldest
first, so each commit leaves a consistent log), then deletes the objects; objects it cannot delete are left
to orphan GC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from metadata.api import MAX_COMMIT_OPS
from metadata.keys import Keys
from metadata.models import PartitionState, SegmentRecord
from storage.objectstore.api import ObjectStore, ObjectStoreError
from storage.offload.state import PartitionStateAccess

log = logging.getLogger(__name__)

_CHUNK = MAX_COMMIT_OPS - 8


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """Segments to delete (oldest first) and the log start offset once they are gone."""

    delete: tuple[SegmentRecord, ...]
    log_start_offset: int

    @property
    def moves_start(self) -> bool:
        return bool(self.delete)


def plan_retention(
    segments: Sequence[SegmentRecord],
    *,
    log_start_offset: int,
    now_ms: int,
    retention_ms: int = -1,
    retention_bytes: int = -1,
    unoffloaded_bytes: int = 0,
    delete_records_offset: int | None = None,
) -> RetentionPlan:
    """Which segments retention deletes now and the resulting log start offset (see the module doc)."""
    ordered = sorted(segments, key=lambda r: r.base_offset)
    start = max(log_start_offset, delete_records_offset if delete_records_offset is not None else -1)
    remaining = sum(r.data_length for r in ordered) + unoffloaded_bytes
    doomed: list[SegmentRecord] = []
    for record in ordered:
        below_start = record.last_offset < start
        expired = retention_ms >= 0 and now_ms - record.max_timestamp > retention_ms
        too_big = retention_bytes >= 0 and remaining - record.data_length >= retention_bytes
        if not (below_start or expired or too_big):
            break
        doomed.append(record)
        remaining -= record.data_length
    if doomed:
        start = max(start, doomed[-1].last_offset + 1)
    return RetentionPlan(tuple(doomed), start)


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What ``apply_retention`` did: segment keys removed, objects deleted, objects left for GC."""

    removed: tuple[SegmentRecord, ...]
    log_start_offset: int
    objects_deleted: tuple[str, ...]
    objects_left: tuple[str, ...]


async def apply_retention(
    plan: RetentionPlan,
    *,
    keys: Keys,
    objects: ObjectStore,
    access: PartitionStateAccess,
    topic_id: str,
    partition: int,
    step_hook: Callable[[str], None] | None = None,
) -> RetentionResult:
    """Delete the planned segments: segment keys and the log start offset first (atomically, in chunks,
    oldest first), then the objects. ``step_hook("retention_committed")`` runs between the two."""
    removed: list[SegmentRecord] = []
    start = plan.log_start_offset
    chunks = [plan.delete[i : i + _CHUNK] for i in range(0, len(plan.delete), _CHUNK)] or [()]
    for n, chunk in enumerate(chunks):
        target = plan.log_start_offset if n == len(chunks) - 1 else chunk[-1].last_offset + 1
        deletes = [keys.segment(topic_id, partition, r.base_offset) for r in chunk]

        def change(state: PartitionState, target: int = target, chunk: object = chunk) -> PartitionState | None:
            if state.log_start_offset >= target and not chunk:
                return None
            return replace(state, log_start_offset=max(state.log_start_offset, target))

        committed = await access.update(change, deletes=deletes)
        if committed is not None:
            start = committed.log_start_offset
        removed.extend(chunk)
    if step_hook is not None:
        step_hook("retention_committed")
    deleted: list[str] = []
    left: list[str] = []
    names = [r.object_key for r in removed]
    try:
        await objects.delete(names)
        deleted = names
    except ObjectStoreError as exc:
        log.warning("retention of %s/%d: %d objects left for GC: %r", topic_id, partition, len(names), exc)
        left = names
    if removed:
        log.info(
            "retention of %s/%d removed %d segments (offsets %d..%d); log start offset %d",
            topic_id, partition, len(removed), removed[0].base_offset, removed[-1].last_offset, start,
        )  # fmt: skip
    return RetentionResult(tuple(removed), start, tuple(deleted), tuple(left))
