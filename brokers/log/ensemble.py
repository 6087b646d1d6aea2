"""Opening a partition's next ledger on the bookies that are live now.

The configured ensemble (E, Qw, Qa) is tried first. When fewer than E bookies are live, the ensemble
shrinks one bookie at a time (Qw with it) down to Qa: every entry still needs Qa bookies' fsync before it
is confirmed, so the durability of an acknowledged entry is unchanged; only the spread is smaller until
the next rollover. Fewer than Qa live bookies is NotEnoughBookies.
"""

from __future__ import annotations

import logging

from storage.ledger.api import LedgerClient, LedgerWriter, NotEnoughBookies

log = logging.getLogger(__name__)


async def create_on_live_bookies(
    ledgers: LedgerClient, ensemble_size: int, write_quorum: int, ack_quorum: int
) -> tuple[LedgerWriter, bool]:
    """A new ledger with the configured quorums, or on the largest ensemble of at least Qa live bookies;
    and whether it got the configured ensemble."""
    size, qw = ensemble_size, write_quorum
    while True:
        try:
            writer = await ledgers.create_ledger(size, qw, ack_quorum)
        except NotEnoughBookies:
            if size <= ack_quorum:
                raise
            size -= 1
            qw = min(qw, size)
            continue
        if size < ensemble_size:
            log.warning(
                "ledger %d: fewer live bookies than the ensemble: placed on %d/%d/%d instead of %d/%d/%d",
                writer.ledger_id, size, qw, ack_quorum, ensemble_size, write_quorum, ack_quorum,
            )
        return writer, size == ensemble_size
