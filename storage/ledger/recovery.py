"""Reading entries back from their replicas, and ledger recovery as BookKeeper does it.

Recovery: fence the ensemble, read forward from the LAC, re-replicate.

1. Fence: every ensemble bookie is asked to fence the ledger and answers with its LAC. Recovery goes on
   only if the bookies that answered cover every possible ack quorum (``placement.covers``: each write set
   has at least Qw - Qa + 1 of them; with E = Qw that is E - Qa + 1 bookies). Then the old writer can no
   longer gather Qa acks for any entry: every ack quorum holds a fenced bookie.
2. Read forward from max(LAC) + 1, a window of entries at a time, each entry asked of its whole write set:
   an entry that any bookie returns is re-written to its whole write set with the recovery flag (fenced
   bookies take it) and needs Qa acks; an entry for which Qw - Qa + 1 bookies of its write set answer
   NoSuchEntry cannot have been acknowledged by Qa of them, so the ledger ends just before it. Neither
   outcome (bookies unreachable) fails the recovery with NotEnoughBookies; it can be retried.
3. The caller closes the ledger's metadata by compare-and-swap with the last entry and length found.

Every entry carries the ledger length up to itself, so the closed length is the last entry's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from storage.bookie.protocol import BookieClient
from storage.entry import BookieUnavailable, CorruptEntry, StoredEntry, entry_crc
from storage.ledger.api import (
    DiskError,
    LedgerError,
    LedgerInfo,
    NoSuchEntry,
    NoSuchLedger,
    NotEnoughBookies,
    StorageUnavailable,
)
from storage.ledger.placement import covers, write_set

Resolve = Callable[[str], BookieClient | None]
READ_WINDOW = 64


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """What recovery found: the last entry and ledger length to close with, the LAC the fence returned,
    and how many entries past that LAC were re-replicated."""

    last_entry_id: int
    length: int
    fenced_lac: int
    recovered: int


def _client(resolve: Resolve, bookie_id: str) -> BookieClient:
    client = resolve(bookie_id)
    if client is None:
        raise BookieUnavailable(f"bookie {bookie_id} is not live")
    return client


def read_error(ledger_id: int, entry_id: int, errors: list[BaseException]) -> LedgerError:
    """The error to raise when no replica returned an entry: NoSuchLedger if all said so, NotEnoughBookies
    if any could not answer, else CorruptEntry if any copy was damaged, else NoSuchEntry."""
    detail = f"ledger {ledger_id} entry {entry_id}: " + "; ".join(repr(e) for e in errors)
    if errors and all(isinstance(e, NoSuchLedger) for e in errors):
        return NoSuchLedger(detail)
    if any(not isinstance(e, NoSuchEntry | NoSuchLedger | CorruptEntry) for e in errors):
        return NotEnoughBookies(detail)
    if any(isinstance(e, CorruptEntry) for e in errors):
        return CorruptEntry(detail)
    return NoSuchEntry(detail)


async def read_entry(info: LedgerInfo, resolve: Resolve, entry_id: int) -> StoredEntry:
    """The entry from the first bookie of its write set that returns it whole (falling over on any error,
    CorruptEntry included)."""
    errors: list[BaseException] = []
    for pos in write_set(entry_id, len(info.ensemble), info.write_quorum):
        bookie_id = info.ensemble[pos]
        try:
            entry = await _client(resolve, bookie_id).read(info.ledger_id, entry_id)
        except Exception as exc:
            errors.append(exc)
            continue
        if entry.entry_id == entry_id:
            return entry
        errors.append(CorruptEntry(f"bookie {bookie_id} answered entry {entry.entry_id}"))
    raise read_error(info.ledger_id, entry_id, errors)


async def fence_ensemble(info: LedgerInfo, resolve: Resolve) -> int:
    """Fence the ledger on its ensemble; returns the highest LAC among the answers.

    Raises NotEnoughBookies unless the answering bookies cover every ack quorum.
    """

    async def fence(bookie_id: str) -> int:
        return await _client(resolve, bookie_id).fence(info.ledger_id)

    results = await asyncio.gather(*(fence(b) for b in info.ensemble), return_exceptions=True)
    responded: set[int] = set()
    lac = -1
    errors: list[str] = []
    for pos, result in enumerate(results):
        if isinstance(result, BaseException):
            errors.append(f"{info.ensemble[pos]}: {result!r}")
            continue
        responded.add(pos)
        lac = max(lac, result)
    if not covers(responded, len(info.ensemble), info.write_quorum, info.ack_quorum):
        disk = any(isinstance(r, DiskError) for r in results)
        raise (StorageUnavailable if disk else NotEnoughBookies)(
            f"ledger {info.ledger_id}: fencing reached too few bookies to cover every ack quorum: {errors}"
        )
    return lac


async def read_for_recovery(info: LedgerInfo, resolve: Resolve, entry_id: int) -> StoredEntry | None:
    """The entry from any bookie of its write set, or None once Qw - Qa + 1 of them answered
    NoSuchEntry. Raises NotEnoughBookies if neither can be established."""
    bookies = [info.ensemble[p] for p in write_set(entry_id, len(info.ensemble), info.write_quorum)]
    need_missing = info.write_quorum - info.ack_quorum + 1

    async def read(bookie_id: str) -> StoredEntry:
        return await _client(resolve, bookie_id).read(info.ledger_id, entry_id)

    tasks = [asyncio.ensure_future(read(b)) for b in bookies]
    pending = set(tasks)
    missing = 0
    errors: list[str] = []
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    entry = task.result()
                    if entry.entry_id == entry_id:
                        return entry
                    errors.append(f"answered entry {entry.entry_id}")
                elif isinstance(exc, NoSuchEntry):
                    missing += 1
                else:
                    errors.append(repr(exc))
            if missing >= need_missing:
                return None
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # collects every outcome, so none is left unread
    raise NotEnoughBookies(
        f"ledger {info.ledger_id} entry {entry_id}: {missing} of {need_missing} 'no such entry' answers "
        f"and no copy; errors: {errors}"
    )


async def _read_outcome(info: LedgerInfo, resolve: Resolve, entry_id: int) -> StoredEntry | Exception | None:
    try:
        return await read_for_recovery(info, resolve, entry_id)
    except LedgerError as exc:
        return exc


async def rewrite_entry(info: LedgerInfo, resolve: Resolve, entry: StoredEntry, lac: int) -> None:
    """Write ``entry`` to its whole write set with the recovery flag; needs Qa acks."""
    crc = entry_crc(entry.payload)
    positions = write_set(entry.entry_id, len(info.ensemble), info.write_quorum)

    async def add(bookie_id: str) -> None:
        await _client(resolve, bookie_id).add(
            info.ledger_id, entry.entry_id, lac, entry.ledger_length, entry.payload, crc, recovery=True
        )

    results = await asyncio.gather(*(add(info.ensemble[p]) for p in positions), return_exceptions=True)
    acks = sum(1 for r in results if not isinstance(r, BaseException))
    if acks < info.ack_quorum:
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        disk = any(isinstance(r, DiskError) for r in results)
        raise (StorageUnavailable if disk else NotEnoughBookies)(
            f"ledger {info.ledger_id} entry {entry.entry_id}: re-replicated to {acks} bookies, "
            f"{info.ack_quorum} needed: {errors}"
        )


async def recover_ledger(info: LedgerInfo, resolve: Resolve, *, window: int = READ_WINDOW) -> RecoveryResult:
    """Fence, find the last recoverable entry and re-replicate the tail (metadata is the caller's)."""
    lac = await fence_ensemble(info, resolve)
    last = lac
    last_entry: StoredEntry | None = None
    rewrites: list[asyncio.Task[None]] = []
    try:
        next_id = lac + 1
        ended = False
        while not ended:
            ids = range(next_id, next_id + window)
            outcomes = await asyncio.gather(*(_read_outcome(info, resolve, e) for e in ids))
            for entry_id, outcome in zip(ids, outcomes, strict=True):
                if outcome is None:
                    ended = True
                    break
                if isinstance(outcome, Exception):
                    raise outcome
                rewrites.append(asyncio.ensure_future(rewrite_entry(info, resolve, outcome, lac)))
                last, last_entry = entry_id, outcome
            next_id += window
        await asyncio.gather(*rewrites)
    except BaseException:
        for task in rewrites:
            task.cancel()
        await asyncio.gather(*rewrites, return_exceptions=True)
        raise
    if last_entry is not None:
        length = last_entry.ledger_length
    elif last >= 0:
        at_lac = await read_for_recovery(info, resolve, last)
        if at_lac is None:
            raise LedgerError(f"ledger {info.ledger_id}: entry {last} at the fenced LAC is missing")
        length = at_lac.ledger_length
    else:
        length = 0
    return RecoveryResult(last, length, lac, last - lac)
