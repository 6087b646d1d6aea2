"""Entry-level values and errors shared by the bookie server and the quorum ledger client.

An entry travels as (ledger id, entry id, last-add-confirmed, ledger length, payload, CRC-32C of the
payload). The CRC is computed once by the ledger writer, stored by every bookie next to the payload and
checked on every read, so corruption anywhere between the writer and the reader is detected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import crc32c as _crc32c

from storage.ledger.api import LedgerError


class CorruptEntry(LedgerError):
    """A stored entry failed its CRC-32C (or could not be read back whole); read another replica."""


class BookieUnavailable(LedgerError):
    """A bookie cannot serve the request (closed, journal failed, unreachable)."""


entry_crc: Callable[[bytes | bytearray | memoryview], int] = _crc32c.crc32c
"""CRC-32C (Castagnoli) of a buffer, hardware-accelerated where the CPU has it."""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as a bookie returns it: its id, the ledger length up to and including it, the payload."""

    entry_id: int
    ledger_length: int
    payload: bytes
