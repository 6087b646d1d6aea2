"""storage/log_entry.py: the one copy into an entry, sealed and verified."""

from __future__ import annotations

import pytest

from storage import log_entry


def test_allocate_copies_the_batches_behind_room_for_the_header() -> None:
    batches = bytes(range(256)) * 40
    buf = log_entry.allocate(memoryview(batches))
    assert len(buf) == log_entry.HEADER_SIZE + len(batches)
    assert buf[log_entry.HEADER_SIZE :] == batches
    log_entry.seal(buf, log_entry.EntryHeader(5, 9, 1234))
    entry = bytes(buf)
    log_entry.verify(entry)
    assert log_entry.decode_header(entry) == log_entry.EntryHeader(5, 9, 1234)
    assert log_entry.batches_of(entry) == batches
    buf[-1] ^= 1
    with pytest.raises(log_entry.CorruptLogEntry):
        log_entry.verify(bytes(buf))
