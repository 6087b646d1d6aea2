"""Idempotent-producer state of one partition: the last five batches' sequences per producer."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from brokers.codec.batch import BatchHeader
from metadata.models import ProducerSnapshotEntry

log = logging.getLogger(__name__)

MAX_CACHED_BATCHES = 5
MAX_PRODUCERS = 10_000
PRODUCER_BYTES = 1600
"""Estimated heap bytes of one remembered producer, from sys.getsizeof on CPython 3.11: its deque of five
batches (760), five 4-tuples of ints (about 130 each), the state object and its dict slot."""
_SEQ_MOD = 0x80000000


class ProducerStateError(Exception):
    """A batch the producer state refuses; carries the Kafka error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Producer:
    epoch: int
    batches: deque[tuple[int, int, int, int]]  # first_seq, last_seq, first_offset, last_offset
    last_timestamp: int = -1  # the last batch's max timestamp (-1: not seen since the snapshot was restored)


@dataclass(frozen=True, slots=True)
class ActiveProducer:
    """One idempotent producer as DescribeProducers reports it (Kafka's ProducerStateEntry)."""

    producer_id: int
    epoch: int
    last_sequence: int
    """-1 when no batch of this epoch carried a sequence."""
    last_timestamp: int
    """The last batch's max timestamp; -1 when only a snapshot (taken at a ledger rollover) told us of it."""


class ProducerTable:
    """Sequence checks as Kafka does them: duplicates answered with their first offset, gaps refused."""

    def __init__(self, snapshot: tuple[ProducerSnapshotEntry, ...] = ()) -> None:
        self._producers: dict[int, _Producer] = {}
        for entry in snapshot:
            self._producers[entry.producer_id] = _Producer(
                entry.epoch, deque(entry.batches, maxlen=MAX_CACHED_BATCHES)
            )

    def check(self, head: BatchHeader, *, settling: bool = False) -> int | None:
        """None if ``head`` may be appended; its original first offset if it is a retried duplicate.

        Raises ProducerStateError for stale epochs and out-of-order sequences. ``settling``: the partition was
        just taken over here (its producer state restored from the log); a batch *ahead* of the expected
        sequence then gets NOT_LEADER_OR_FOLLOWER (retriable) instead of OUT_OF_ORDER_SEQUENCE_NUMBER. Right
        after a takeover the missing batch is almost always one refused with NOT_LEADER_OR_FOLLOWER while the
        partition was loading and not yet retried, while the client's next requests already arrive; librdkafka
        answers an out-of-order refusal of a later batch by bumping its epoch and renumbering every message
        not yet acknowledged — including ones the previous owner wrote before it died, which the new epoch
        then writes a second time (a duplicate the nemesis found). A retriable refusal makes it retry in order.
        """
        if head.producer_id >= 0 and head.is_control:
            marker_of = self._producers.get(head.producer_id)
            if marker_of is not None and head.producer_epoch < marker_of.epoch:
                raise ProducerStateError(
                    ErrorCode.invalid_producer_epoch,
                    f"marker for producer {head.producer_id} epoch {head.producer_epoch}: it is at {marker_of.epoch}",
                )
            return None
        if head.producer_id < 0 or head.base_sequence < 0:
            return None
        state = self._producers.get(head.producer_id)
        if state is None:
            return None  # an unknown producer (new, or its state expired): accept, as Kafka does
        if head.producer_epoch < state.epoch:
            raise ProducerStateError(
                ErrorCode.invalid_producer_epoch,
                f"producer {head.producer_id} epoch {head.producer_epoch} is older than {state.epoch}",
            )
        if head.producer_epoch > state.epoch:
            if head.base_sequence != 0:
                raise ProducerStateError(
                    ErrorCode.out_of_order_sequence_number,
                    f"new epoch {head.producer_epoch} must start at sequence 0, got {head.base_sequence}",
                )
            # Rare, and what an anomaly hunt asks first: a client that bumps its epoch renumbers what it had
            # not seen acknowledged, so a batch it wrote before the bump may come again under the new epoch.
            log.info(
                "producer %d: epoch %d -> %d (last sequence %s under the old one)", head.producer_id, state.epoch,
                head.producer_epoch, state.batches[-1][1] if state.batches else "none",
            )  # fmt: skip
            return None
        for first_seq, last_seq, first_offset, _last_offset in state.batches:
            if first_seq == head.base_sequence and last_seq == head.last_sequence:
                return first_offset
        if state.batches:
            expected = (state.batches[-1][1] + 1) % _SEQ_MOD
            ahead = (head.base_sequence - expected) % _SEQ_MOD
            if settling and 0 < ahead < _SEQ_MOD // 2:
                raise ProducerStateError(
                    ErrorCode.not_leader_or_follower,
                    f"producer {head.producer_id}: sequence {head.base_sequence} is ahead of {expected}, whose batch "
                    "has not arrived since this broker took the partition; retry in order",
                )
            if head.base_sequence != expected:
                log.warning(
                    "producer %d epoch %d: batch of sequences %d..%d refused (out of order): expected %d; "
                    "cached batches %s", head.producer_id, head.producer_epoch, head.base_sequence,
                    head.last_sequence, expected, [(b[0], b[1], b[2]) for b in state.batches],
                )  # fmt: skip
                raise ProducerStateError(
                    ErrorCode.out_of_order_sequence_number,
                    f"producer {head.producer_id}: sequence {head.base_sequence}, expected {expected}",
                )
        return None

    def epoch_of(self, producer_id: int) -> int | None:
        """The epoch the table knows for ``producer_id`` (None: unknown here)."""
        state = self._producers.get(producer_id)
        return None if state is None else state.epoch

    def record(self, head: BatchHeader, first_offset: int, last_offset: int) -> None:
        """Remember an appended batch."""
        if head.producer_id < 0:
            return
        state = self._producers.get(head.producer_id)
        if state is None or head.producer_epoch > state.epoch:
            if state is None and len(self._producers) >= MAX_PRODUCERS:
                self._producers.pop(next(iter(self._producers)))
            state = _Producer(head.producer_epoch, deque(maxlen=MAX_CACHED_BATCHES))
            self._producers[head.producer_id] = state
        if head.base_sequence >= 0:
            state.batches.append((head.base_sequence, head.last_sequence, first_offset, last_offset))
        state.last_timestamp = head.max_timestamp

    def memory_bytes(self) -> int:
        """Estimated heap bytes of the table (``PRODUCER_BYTES`` per producer)."""
        return len(self._producers) * PRODUCER_BYTES

    def active(self) -> tuple[ActiveProducer, ...]:
        """Every producer the table remembers, by producer id (DescribeProducers)."""
        return tuple(
            ActiveProducer(pid, p.epoch, p.batches[-1][1] if p.batches else -1, p.last_timestamp)
            for pid, p in sorted(self._producers.items())
        )

    def snapshot(self) -> tuple[ProducerSnapshotEntry, ...]:
        return tuple(
            ProducerSnapshotEntry(pid, p.epoch, tuple(p.batches)) for pid, p in self._producers.items()
        )
