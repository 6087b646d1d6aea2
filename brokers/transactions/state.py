"""A transactional id's metadata and the coordinator's state machine, as pure functions (no I/O).

Each request becomes a ``Decision``: an error for the client, or the metadata to write to
``__transaction_state`` (applied once durable) and whether markers must then complete the transaction.
The states and their numbers are Kafka's (TransactionState), and so are the transitions:

    Empty/CompleteCommit/CompleteAbort --AddPartitions--> Ongoing --EndTxn--> PrepareCommit/PrepareAbort
    PrepareCommit/PrepareAbort --every marker durable--> CompleteCommit/CompleteAbort
    Ongoing --InitProducerId or timeout: epoch bumped (fences the old producer)--> PrepareAbort
    Empty/Complete* --InitProducerId--> Empty with the epoch bumped (a new producer id when it is exhausted)

PrepareEpochFence is never written (Kafka does not either): a fence writes PrepareAbort with the bumped epoch.

Transaction version 2 (KIP-890 part 2), chosen per request by the versions a client sends (EndTxn v5, a Produce
v12 / TxnOffsetCommit v5 whose partition the leader adds implicitly): every EndTxn bumps the epoch, so the
markers and the producer's next transaction use epoch+1 and a late write of the ended transaction (epoch) is
refused by the partitions; when the epoch cannot be bumped any more the markers carry the last one and the
transaction completes onto a fresh producer id at epoch 0 (``next_producer_id`` until then). A retried EndTxn
(the answer was lost) arrives with the previous epoch and is recognised by ``last_producer_*``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from kio.schema.errors import ErrorCode

MAX_EPOCH = 0x7FFF
NO_PRODUCER_ID = -1
NO_EPOCH = -1
TV_0 = 0
"""Transaction version of a client that adds partitions itself and keeps its epoch across transactions."""
TV_2 = 2
"""KIP-890 part 2: epoch bumped by every EndTxn, partitions added implicitly by their leaders."""


class TxnState(enum.IntEnum):
    """Kafka's transaction states (the status byte of TransactionLogValue)."""

    EMPTY = 0
    ONGOING = 1
    PREPARE_COMMIT = 2
    PREPARE_ABORT = 3
    COMPLETE_COMMIT = 4
    COMPLETE_ABORT = 5
    DEAD = 6
    PREPARE_EPOCH_FENCE = 7

    @property
    def kafka_name(self) -> str:
        """The name DescribeTransactions / ListTransactions use (``PrepareCommit``)."""
        return "".join(w.capitalize() for w in self.name.split("_"))


STATE_BY_NAME = {s.kafka_name: s for s in TxnState}
PREPARING = frozenset({TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT})
COMPLETABLE = frozenset({TxnState.EMPTY, TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT})


@dataclass(frozen=True, slots=True)
class TxnMetadata:
    """A transactional id's state. ``last_producer_*`` is the id/epoch before the latest bump (KIP-360 retries:
    a producer that lost InitProducerId's or a TV2 EndTxn's answer asks again with its old epoch);
    ``next_producer_id``: the fresh id a TV2 transaction whose epoch overflowed completes onto;
    ``client_version``: the transaction version of the request that last changed the state (Kafka's
    ClientTransactionVersion). All are persisted in TransactionLogValue v1's tagged fields (records.py)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState
    partitions: frozenset[tuple[str, int]] = frozenset()
    start_ms: int = -1
    update_ms: int = -1
    last_producer_id: int = NO_PRODUCER_ID
    last_producer_epoch: int = NO_EPOCH
    next_producer_id: int = NO_PRODUCER_ID
    client_version: int = TV_0

    @property
    def epoch_exhausted(self) -> bool:
        """Kafka's rule: an epoch of Short.MAX_VALUE - 1 cannot be bumped (a new producer id is taken)."""
        return self.producer_epoch >= MAX_EPOCH - 1


@dataclass(frozen=True, slots=True)
class Decision:
    """What a request does: ``error`` for the client; ``write`` (if any) to make durable first; ``markers``:
    complete the written PrepareCommit/PrepareAbort with markers afterwards."""

    error: ErrorCode
    write: TxnMetadata | None = None
    markers: bool = False


def _ownership(meta: TxnMetadata | None, producer_id: int, producer_epoch: int) -> ErrorCode:
    if meta is None or meta.producer_id != producer_id:
        return ErrorCode.invalid_producer_id_mapping
    if meta.producer_epoch != producer_epoch:
        return ErrorCode.producer_fenced
    return ErrorCode.none


def fence_and_abort(meta: TxnMetadata, now: int) -> TxnMetadata:
    """An ongoing transaction aborted by the coordinator (a new producer's InitProducerId, or its timeout):
    the epoch is bumped so the old producer is fenced, and the markers carry the bumped epoch. The previous
    epoch is forgotten (Kafka's PrepareEpochFence does the same): the fenced producer's KIP-360 retry or TV2
    EndTxn retry with it must not be taken for a retry of ours."""
    # Clients never get MAX_EPOCH (an exhausted epoch takes a new producer id), so a fence can always bump to it.
    epoch = min(meta.producer_epoch + 1, MAX_EPOCH)
    return replace(meta, producer_epoch=epoch, state=TxnState.PREPARE_ABORT, update_ms=now,
                   last_producer_id=meta.producer_id, last_producer_epoch=NO_EPOCH, next_producer_id=NO_PRODUCER_ID)


def init_producer(
    meta: TxnMetadata | None, transactional_id: str, fresh_producer_id: int | None, producer_id: int,
    producer_epoch: int, timeout_ms: int, now: int,
) -> Decision:
    """InitProducerId with a transactional id. ``fresh_producer_id``: a newly allocated id, needed when there
    is no metadata yet or the epoch is exhausted (``needs_producer_id``). ``producer_id/epoch`` are the
    request's (KIP-360; -1 when the producer has none)."""
    if meta is None:
        if fresh_producer_id is None:
            raise ValueError("a new transactional id needs a fresh producer id")
        return Decision(ErrorCode.none, TxnMetadata(transactional_id, fresh_producer_id, 0, timeout_ms,
                                                    TxnState.EMPTY, update_ms=now))
    if producer_id != NO_PRODUCER_ID:
        current = (meta.producer_id, meta.producer_epoch)
        last = (meta.last_producer_id, meta.last_producer_epoch)
        if (producer_id, producer_epoch) not in (current, last) or producer_epoch == NO_EPOCH:
            return Decision(ErrorCode.producer_fenced)
        if (producer_id, producer_epoch) != current and meta.state in COMPLETABLE:
            return Decision(ErrorCode.none)  # a retry of the bump that already happened: answer it again
    if meta.state in PREPARING:
        return Decision(ErrorCode.concurrent_transactions)
    if meta.state == TxnState.ONGOING:
        return Decision(ErrorCode.concurrent_transactions, fence_and_abort(meta, now), markers=True)
    if meta.epoch_exhausted:
        if fresh_producer_id is None:
            raise ValueError("an exhausted epoch needs a fresh producer id")
        pid, epoch = fresh_producer_id, 0
    else:
        pid, epoch = meta.producer_id, meta.producer_epoch + 1
    # KIP-360: a producer that named its current epoch may retry with it (kept as the previous one); a new
    # producer (no id in the request) fences every earlier epoch, so none is kept (as Kafka).
    last_epoch = meta.producer_epoch if producer_id != NO_PRODUCER_ID else NO_EPOCH
    return Decision(ErrorCode.none, replace(
        meta, producer_id=pid, producer_epoch=epoch, timeout_ms=timeout_ms, state=TxnState.EMPTY,
        partitions=frozenset(), start_ms=-1, update_ms=now, last_producer_id=meta.producer_id,
        last_producer_epoch=last_epoch, next_producer_id=NO_PRODUCER_ID,
    ))


def needs_producer_id(meta: TxnMetadata | None) -> bool:
    """Whether ``init_producer`` will need a fresh producer id for this metadata."""
    return meta is None or (meta.epoch_exhausted and meta.state in COMPLETABLE)


def add_partitions(
    meta: TxnMetadata | None, producer_id: int, producer_epoch: int, partitions: frozenset[tuple[str, int]], now: int,
    client_version: int = TV_0,
) -> Decision:
    """AddPartitionsToTxn / AddOffsetsToTxn: the partitions join the transaction (which starts if none is open).
    ``client_version`` TV_2: a partition leader's implicit add for a TV2 producer (KIP-890 part 2)."""
    error = _ownership(meta, producer_id, producer_epoch)
    if error != ErrorCode.none or meta is None:
        return Decision(error)
    if meta.state in PREPARING:
        return Decision(ErrorCode.concurrent_transactions)
    if meta.state not in COMPLETABLE and meta.state != TxnState.ONGOING:
        return Decision(ErrorCode.invalid_txn_state)
    if meta.state == TxnState.ONGOING and partitions <= meta.partitions:
        return Decision(ErrorCode.none)
    start = meta.start_ms if meta.state == TxnState.ONGOING else now
    return Decision(ErrorCode.none, replace(meta, state=TxnState.ONGOING, partitions=meta.partitions | partitions,
                                            start_ms=start, update_ms=now, client_version=client_version))


def verify_partition(meta: TxnMetadata | None, producer_id: int, producer_epoch: int, tp: tuple[str, int]) -> ErrorCode:
    """KIP-890 part 1 (AddPartitionsToTxn verify_only): is ``tp`` in this producer's open transaction?"""
    error = _ownership(meta, producer_id, producer_epoch)
    if error != ErrorCode.none or meta is None:
        return error
    if meta.state in PREPARING:
        return ErrorCode.concurrent_transactions
    if meta.state == TxnState.ONGOING and tp in meta.partitions:
        return ErrorCode.none
    return ErrorCode.invalid_txn_state


def end_needs_producer_id(meta: TxnMetadata | None, producer_id: int, producer_epoch: int, bump_epoch: bool) -> bool:
    """Whether ``end_txn`` will need a fresh producer id: a TV2 end of a transaction whose epoch cannot be bumped
    again (it completes onto a new producer id)."""
    return (
        bump_epoch and meta is not None and meta.producer_id == producer_id and meta.producer_epoch == producer_epoch
        and meta.epoch_exhausted and meta.state not in PREPARING
    )


def _tv2_retry(meta: TxnMetadata, producer_id: int, producer_epoch: int) -> bool:
    """A TV2 EndTxn retried after its epoch bump was written (its answer was lost): the request carries the epoch
    before the bump, or, once an overflowed transaction completed onto a new producer id, the old id's last one."""
    if meta.state not in PREPARING and meta.state not in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT):
        return False
    bumped = (meta.producer_id == producer_id and meta.producer_epoch == producer_epoch + 1
              and meta.last_producer_epoch == producer_epoch)
    overflowed = (meta.state not in PREPARING and meta.last_producer_id == producer_id
                  and producer_epoch == MAX_EPOCH - 1 and meta.producer_epoch == 0 and meta.producer_id != producer_id)
    return bumped or overflowed


def end_txn(
    meta: TxnMetadata | None, producer_id: int, producer_epoch: int, commit: bool, now: int, bump_epoch: bool = False,
    fresh_producer_id: int | None = None,
) -> Decision:
    """EndTxn. ``bump_epoch`` (KIP-890 part 2, EndTxn v5): the transaction's end bumps the producer's epoch, so
    markers and every later write use the new one; a retried EndTxn then arrives with the previous epoch. An
    epoch that cannot be bumped again (``end_needs_producer_id``) is ended at the last epoch and completes onto
    ``fresh_producer_id`` at epoch 0 (``answer`` gives what the client is told). A TV2 abort with no transaction
    open also bumps the epoch (the client cannot know whether a partition leader added one implicitly)."""
    wanted = TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT
    done = TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT
    if bump_epoch and meta is not None and _tv2_retry(meta, producer_id, producer_epoch):
        if meta.state == wanted:
            return Decision(ErrorCode.concurrent_transactions)
        return Decision(ErrorCode.none if meta.state == done else ErrorCode.invalid_txn_state)
    error = _ownership(meta, producer_id, producer_epoch)
    if error != ErrorCode.none or meta is None:
        return Decision(error)
    if meta.state == TxnState.ONGOING or (bump_epoch and meta.state in COMPLETABLE and not commit):
        if not bump_epoch:  # TV0/TV1: the epoch stays; the previous one (KIP-360) is kept as it was
            return Decision(ErrorCode.none, replace(meta, state=wanted, update_ms=now, client_version=TV_0),
                            markers=True)
        next_pid = NO_PRODUCER_ID
        if meta.epoch_exhausted:
            if fresh_producer_id is None:
                raise ValueError("an exhausted epoch needs a fresh producer id")
            next_pid = fresh_producer_id
        prepared = replace(meta, state=wanted, producer_epoch=meta.producer_epoch + 1, update_ms=now,
                           last_producer_id=meta.producer_id, last_producer_epoch=meta.producer_epoch,
                           next_producer_id=next_pid, client_version=TV_2)
        return Decision(ErrorCode.none, prepared, markers=True)
    if meta.state == wanted:
        return Decision(ErrorCode.concurrent_transactions)
    if meta.state == done and not bump_epoch:
        return Decision(ErrorCode.none)
    if meta.state == done:
        return Decision(ErrorCode.producer_fenced)  # TV2: a second commit at the bumped epoch is not a retry (Kafka)
    return Decision(ErrorCode.invalid_txn_state)


def answer(meta: TxnMetadata) -> tuple[int, int]:
    """The producer id and epoch EndTxn v5 answers: those the client's next transaction uses (the fresh id at
    epoch 0 once an overflowed transaction completes onto it)."""
    if meta.next_producer_id != NO_PRODUCER_ID:
        return meta.next_producer_id, 0
    return meta.producer_id, meta.producer_epoch


def completed(meta: TxnMetadata, now: int) -> TxnMetadata:
    """Every marker of a PrepareCommit/PrepareAbort is durable: CompleteCommit/CompleteAbort, partitions cleared
    (a TV2 transaction whose epoch overflowed moves to its fresh producer id at epoch 0)."""
    state = TxnState.COMPLETE_COMMIT if meta.state == TxnState.PREPARE_COMMIT else TxnState.COMPLETE_ABORT
    if meta.next_producer_id != NO_PRODUCER_ID:
        return replace(meta, state=state, partitions=frozenset(), update_ms=now, producer_id=meta.next_producer_id,
                       producer_epoch=0, last_producer_id=meta.producer_id, last_producer_epoch=meta.producer_epoch,
                       next_producer_id=NO_PRODUCER_ID)
    return replace(meta, state=state, partitions=frozenset(), update_ms=now)


def timed_out(meta: TxnMetadata, now: int) -> bool:
    """An ongoing transaction open longer than its producer's transaction.timeout.ms."""
    return meta.state == TxnState.ONGOING and meta.start_ms >= 0 and now > meta.start_ms + meta.timeout_ms


def expired(meta: TxnMetadata, now: int, expiration_ms: int) -> bool:
    """A transactional id unused for transactional.id.expiration.ms with no transaction in flight."""
    return meta.state in COMPLETABLE and now > meta.update_ms + expiration_ms
