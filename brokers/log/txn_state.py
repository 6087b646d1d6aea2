"""Transaction state of one partition: the open transactions (what holds the last stable offset back) and the
aborted-transaction index of the data still in ledgers.

Fed batches in offset order (``apply``), as the producer table is: a transactional data batch opens its
producer's transaction at its first offset (if none is open); a COMMIT or ABORT control batch closes it, and an
ABORT adds (producer_id, first offset, marker offset) to the index. The partition log keeps two: one fed on
append (what KIP-890 verification and DescribeProducers ask: is a transaction open here) and one fed on
confirmation (what the last stable offset, read_committed reads and snapshots come from: only durable data).

The index is bounded by the data in ledgers: ``trim`` drops the entries whose marker is below the first offset
still read from ledgers (their segments carry them, storage/segment/format.py) or below the log start.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from kio.schema.errors import ErrorCode

from brokers.codec.batch import BatchHeader
from brokers.codec.control import ABORT, COMMIT, marker_coordinator_epoch, marker_type

AbortedTxn = tuple[int, int, int]
"""(producer_id, first offset of the transaction, offset of its ABORT marker)."""
MAX_COORDINATOR_EPOCHS = 10_000
"""Producers whose last marker's coordinator epoch is remembered (the oldest is forgotten first)."""
ABORTS_PER_LEDGER = 5_000
"""A ledger holding this many ABORT markers is rolled over, so offload can move their index into a segment."""
MAX_INDEXED_ABORTS = 20_000
"""Aborted transactions a partition indexes itself (in memory and in its state, which etcd stores: about 15
bytes each); beyond it a new transaction is refused retriably until offload moves some into segments."""


class MarkerFenced(Exception):
    """A marker from a coordinator epoch older than one that already wrote a marker for the producer."""

    code = ErrorCode.transaction_coordinator_fenced


class TxnState:
    """Open transactions by producer, and aborted ones in marker order (when ``index`` is kept)."""

    __slots__ = ("_index", "_lasts", "_max_span", "aborted", "aborts", "coordinator_epochs", "ongoing")

    def __init__(
        self,
        ongoing: Iterable[tuple[int, int]] = (),
        aborted: Iterable[AbortedTxn] = (),
        coordinator_epochs: Iterable[tuple[int, int]] = (),
        *,
        index: bool = True,
    ) -> None:
        self.ongoing: dict[int, int] = dict(ongoing)
        """producer_id -> first offset of its open transaction on this partition."""
        self.coordinator_epochs: dict[int, int] = dict(coordinator_epochs)
        """producer_id -> coordinator epoch of the last marker written for it (Kafka's ProducerStateEntry)."""
        self._index = index
        self.aborts = 0
        """ABORT markers that ended a transaction since this state was made (a counter for rollover)."""
        self.aborted: list[AbortedTxn] = sorted(aborted, key=lambda t: t[2]) if index else []
        self._lasts = [t[2] for t in self.aborted]  # marker offsets, ascending (bisect)
        self._max_span = max((t[2] - t[1] for t in self.aborted), default=0)

    def copy(self, *, index: bool | None = None) -> TxnState:
        return TxnState(
            self.ongoing.items(), self.aborted, self.coordinator_epochs.items(),
            index=self._index if index is None else index,
        )  # fmt: skip

    def check_markers(self, buf: bytes | bytearray | memoryview, headers: Sequence[BatchHeader]) -> None:
        """Raise MarkerFenced for a marker whose coordinator epoch is below the last one seen for its producer:
        a coordinator that lost the transactional id must not end a transaction its successor decides."""
        for head in headers:
            if head.is_control and head.producer_id in self.coordinator_epochs:
                epoch = marker_coordinator_epoch(buf, head)
                known = self.coordinator_epochs[head.producer_id]
                if epoch < known:
                    raise MarkerFenced(
                        f"marker for producer {head.producer_id} from coordinator epoch {epoch}; {known} wrote one"
                    )

    def apply(self, buf: bytes | bytearray | memoryview, headers: Sequence[BatchHeader], first_offset: int) -> None:
        """Account for ``headers`` (batches in ``buf``, their base offsets possibly not yet patched), the first
        of them at ``first_offset``, the rest following it."""
        offset = first_offset
        for head in headers:
            if head.producer_id >= 0 and head.is_transactional:
                if head.is_control:
                    self._seen_coordinator(head.producer_id, marker_coordinator_epoch(buf, head))
                    self.end(head.producer_id, marker_type(buf, head), offset)
                else:
                    self.ongoing.setdefault(head.producer_id, offset)
            offset += head.record_span

    def _seen_coordinator(self, producer_id: int, epoch: int) -> None:
        epochs = self.coordinator_epochs
        if producer_id not in epochs and len(epochs) >= MAX_COORDINATOR_EPOCHS:
            epochs.pop(next(iter(epochs)))
        epochs[producer_id] = max(epoch, epochs.get(producer_id, -1))

    def end(self, producer_id: int, kind: int | None, marker_offset: int) -> None:
        """A control batch of ``producer_id`` at ``marker_offset``: COMMIT or ABORT closes its transaction."""
        if kind not in (ABORT, COMMIT):
            return
        first = self.ongoing.pop(producer_id, None)
        if kind == ABORT and first is not None:
            self.aborts += 1
        if kind == ABORT and first is not None and self._index:
            self.aborted.append((producer_id, first, marker_offset))
            self._lasts.append(marker_offset)
            self._max_span = max(self._max_span, marker_offset - first)

    def first_unstable(self) -> int | None:
        """The first offset of the oldest open transaction (None: none is open)."""
        return min(self.ongoing.values()) if self.ongoing else None

    def aborted_between(self, start: int, end: int) -> list[tuple[int, int]]:
        """(producer_id, first offset) of every indexed aborted transaction overlapping [start, end): its marker
        at or after ``start`` and its first offset before ``end``."""
        out: list[tuple[int, int]] = []
        for i in range(bisect.bisect_left(self._lasts, start), len(self.aborted)):
            pid, first, last = self.aborted[i]
            if last - self._max_span >= end:
                break  # every later one starts at or after end
            if first < end:
                out.append((pid, first))
        return out

    def trim(self, below: int) -> None:
        """Drop the indexed aborted transactions whose marker is below ``below``."""
        cut = bisect.bisect_left(self._lasts, below)
        if cut:
            del self.aborted[:cut]
            del self._lasts[:cut]
            self._max_span = max((t[2] - t[1] for t in self.aborted), default=0)

    def snapshot(self) -> tuple[tuple[tuple[int, int], ...], tuple[AbortedTxn, ...], tuple[tuple[int, int], ...]]:
        """(open transactions, indexed aborted transactions, coordinator epochs) for PartitionState."""
        return tuple(sorted(self.ongoing.items())), tuple(self.aborted), tuple(self.coordinator_epochs.items())
