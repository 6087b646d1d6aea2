"""Transactional offset commits (TxnOffsetCommit) held by a shard until their transaction ends.

A TxnOffsetCommit writes its offset records to ``__consumer_offsets`` as a transactional batch of the
producer (KIP-98); they are not committed offsets yet — OffsetFetch does not see them, and with
``require_stable`` answers UNSTABLE_OFFSET_COMMIT for their partitions — until the transaction coordinator's
marker (a control batch of that producer) lands on the partition: COMMIT applies them, ABORT drops them.
Replay does the same with the transactional batches and control batches it reads, so a shard rebuilt
anywhere (a restart, a coordinator move) ends in the same state as the one that served them.

As Kafka does, a committed transactional offset replaces the group's committed offset only if it was
written after it (by log offset): a plain OffsetCommit that landed between the TxnOffsetCommit and the
marker wins; and a tombstone for a group partition (OffsetDelete, DeleteGroups, expiry) drops its pending
offsets too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ABORT = 0
COMMIT = 1
_CONTROL_KEY = struct.Struct(">hh")

OffsetKey = tuple[str, str, int]
"""(group, topic, partition)."""


class ControlRecordError(ValueError):
    """A control record key that is not Kafka's (version, type)."""


def control_type(key: bytes | None) -> int:
    """The type of a control record (0 = ABORT, 1 = COMMIT, others: not a transaction marker)."""
    if key is None or len(key) < _CONTROL_KEY.size:
        raise ControlRecordError(f"control record key of {0 if key is None else len(key)} bytes")
    _version, kind = _CONTROL_KEY.unpack_from(key)
    return int(kind)


@dataclass(frozen=True, slots=True)
class PendingOffset:
    """One offset written by a TxnOffsetCommit, waiting for its transaction's end."""

    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp: int
    log_offset: int
    """Where its record sits in ``__consumer_offsets`` (Kafka's ordering against plain commits)."""


@dataclass(slots=True)
class PendingTransaction:
    """One producer's pending offsets on this shard."""

    producer_epoch: int
    first_log_offset: int
    offsets: dict[OffsetKey, PendingOffset] = field(default_factory=dict)


class PendingTxnOffsets:
    """Every producer's pending transactional offsets on one shard, and which group partitions they touch."""

    def __init__(self) -> None:
        self.by_producer: dict[int, PendingTransaction] = {}
        self._by_group: dict[str, dict[tuple[str, int], set[int]]] = {}
        """group -> (topic, partition) -> producer ids with a pending offset there (UNSTABLE_OFFSET_COMMIT)."""
        self.epochs: dict[int, int] = {}
        """The latest epoch seen per producer that wrote here (a lower one is fenced); bounded by ``forget``."""

    def __bool__(self) -> bool:
        return bool(self.by_producer)

    def __len__(self) -> int:
        return sum(len(t.offsets) for t in self.by_producer.values())

    def add(self, producer_id: int, producer_epoch: int, key: OffsetKey, value: PendingOffset) -> None:
        """A durable transactional offset record (a live write or replay)."""
        txn = self.by_producer.get(producer_id)
        if txn is None:
            txn = PendingTransaction(producer_epoch, value.log_offset)
            self.by_producer[producer_id] = txn
        txn.producer_epoch = max(txn.producer_epoch, producer_epoch)
        txn.offsets[key] = value
        self._by_group.setdefault(key[0], {}).setdefault((key[1], key[2]), set()).add(producer_id)
        self.note_epoch(producer_id, producer_epoch)

    def note_epoch(self, producer_id: int, producer_epoch: int) -> None:
        if producer_epoch > self.epochs.get(producer_id, -1):
            self.epochs[producer_id] = producer_epoch

    def fenced(self, producer_id: int, producer_epoch: int) -> bool:
        """Whether ``producer_epoch`` is older than one this shard saw for the producer."""
        return producer_epoch < self.epochs.get(producer_id, -1)

    def end(self, producer_id: int) -> dict[OffsetKey, PendingOffset]:
        """The producer's transaction ended (either way): its pending offsets, now removed."""
        txn = self.by_producer.pop(producer_id, None)
        if txn is None:
            return {}
        for group, topic, partition in txn.offsets:
            by_tp = self._by_group.get(group)
            if by_tp is None:
                continue
            holders = by_tp.get((topic, partition))
            if holders is not None:
                holders.discard(producer_id)
                if not holders:
                    del by_tp[(topic, partition)]
            if not by_tp:
                del self._by_group[group]
        return txn.offsets

    def drop(self, group: str, topic: str, partition: int) -> None:
        """A tombstone for the group partition (OffsetDelete, DeleteGroups, expiry): its pending offsets go too,
        as Kafka drops them; a producer left with nothing pending here is forgotten (its marker changes nothing)."""
        by_tp = self._by_group.get(group)
        holders = None if by_tp is None else by_tp.pop((topic, partition), None)
        if by_tp is not None and not by_tp:
            del self._by_group[group]
        for producer_id in holders or ():
            txn = self.by_producer.get(producer_id)
            if txn is None:
                continue
            txn.offsets.pop((group, topic, partition), None)
            if not txn.offsets:
                del self.by_producer[producer_id]

    def pending_of(self, group: str) -> list[tuple[str, int]]:
        """The group partitions with a pending offset (DeleteGroups tombstones them too)."""
        return sorted(self._by_group.get(group, {}))

    def forget_idle(self) -> None:
        """Drop remembered epochs of producers with nothing pending (called when a snapshot resets state)."""
        self.epochs = {pid: e for pid, e in self.epochs.items() if pid in self.by_producer}

    def is_pending(self, group: str, topic: str, partition: int) -> bool:
        """Whether a transaction holds an uncommitted offset for this group partition."""
        by_tp = self._by_group.get(group)
        return by_tp is not None and (topic, partition) in by_tp

    def first_log_offset(self) -> int | None:
        """The first log offset a replay must read to rebuild what is pending (None: nothing is)."""
        return min((t.first_log_offset for t in self.by_producer.values()), default=None)
