"""Building and uploading one segment as a stream: from the owner's bytes, or read back from the bookies.

The segment's bytes go to the object store as they are produced (``ObjectStore.put_stream``): the data
section is the entries' own batches (views, no copy), hashed on the way (``StreamingSegmentWriter``), then
index, snapshot and footer. Memory per upload beyond the entries themselves: the object store's gathering
bound (8 MiB) or, for a longer segment on S3, two 8 MiB multipart parts in flight; on the bookie path also
one run of ``read_entries`` entries.

Sources, in order of preference:

* **owner** — the entries this broker confirmed into the ledger (``OwnerBytes``), cut at the closed ledger's
  last entry id from the ledger metadata (what recovery or the clean close fixed): no bookie read at all.
* **bookies** — the closed ledger opened without recovery and read in runs, as before (after a restart or
  a takeover, or when the owner's budget ran out).

Both hand ``append_entry`` the very bytes the bookies store, so the object is byte-for-byte the same.
Any problem with the owner's bytes (a hole, offsets that do not match the ref) falls back to the bookies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from metadata.models import LedgerRef, ProducerSnapshotEntry
from storage.ledger.api import LedgerClient, LedgerState
from storage.objectstore.api import ObjectStore
from storage.offload.owner_bytes import OwnerBytes
from storage.segment.format import CorruptSegment, SegmentFooter, StreamingSegmentWriter

log = logging.getLogger(__name__)

RUN_BYTES = 4 * 1024 * 1024
"""Owner entries are checked (CRC-32C, framing) in a thread in runs of about this many bytes."""


Entries = Sequence[bytes | bytearray | memoryview]
EntrySource = Callable[[], AsyncIterator[Entries]]
"""Runs of ledger entries in entry order (called once per upload attempt)."""


class BuildError(Exception):
    """The ledger's entries do not make the segment its ref describes (converted to OffloadError)."""


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """What one segment is made of."""

    ref: LedgerRef
    producers: tuple[ProducerSnapshotEntry, ...]
    aborted: tuple[tuple[int, int, int], ...]
    index_interval: int
    read_entries: int


@dataclass(frozen=True, slots=True)
class Streamed:
    """An uploaded (or already present) segment: its footer, the writer (for its snapshot), its source."""

    footer: SegmentFooter
    writer: StreamingSegmentWriter
    source: str  # "owner" or "bookies"


class SegmentStream:
    """One segment's bytes as an async iterator of chunks; ``footer`` once the last chunk was produced."""

    def __init__(self, spec: BuildSpec, entries: EntrySource):
        self.spec = spec
        ref = spec.ref
        self.writer = StreamingSegmentWriter(
            ref.first_offset, ref.ledger_id, producers=spec.producers, aborted=spec.aborted,
            index_interval=spec.index_interval,
        )  # fmt: skip
        self._entries = entries
        self.footer: SegmentFooter | None = None

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        writer, ref = self.writer, self.spec.ref
        async for run in self._entries():
            try:
                # CRC-32C checks of megabytes: in a thread (it releases the GIL), off the loop
                await asyncio.to_thread(_append_all, writer, run)
            except CorruptSegment as exc:
                raise BuildError(str(exc)) from exc
            for chunk in writer.take_chunks():
                yield chunk
        if (writer.first_batch_offset, writer.last_offset) != (ref.first_offset, ref.last_offset):
            raise BuildError(
                f"ledger {ref.ledger_id} holds offsets {writer.first_batch_offset}..{writer.last_offset}, "
                f"its ref says {ref.first_offset}..{ref.last_offset}"
            )
        tail = writer.finish_tail()
        self.footer = SegmentFooter.parse(tail)
        yield tail


def owner_entries(kept: Entries) -> EntrySource:
    """The owner's entries in runs of about ``RUN_BYTES``."""

    async def runs() -> AsyncIterator[Entries]:
        run: list[bytes | bytearray | memoryview] = []
        size = 0
        for entry in kept:
            run.append(entry)
            size += len(entry)
            if size >= RUN_BYTES:
                yield run
                run, size = [], 0
        if run:
            yield run

    return runs


def bookie_entries(ledgers: LedgerClient, ref: LedgerRef, read_entries: int) -> EntrySource:
    """The closed ledger's entries read from the bookies (no recovery) in runs of ``read_entries``."""

    async def runs() -> AsyncIterator[Entries]:
        reader = await ledgers.open_ledger(ref.ledger_id, recover=False)
        try:
            info = reader.info
            if info.state is not LedgerState.CLOSED:
                raise BuildError(f"ledger {ref.ledger_id} is {info.state.value}, not CLOSED")
            if info.last_entry_id < 0:
                raise BuildError(f"ledger {ref.ledger_id} has no entries; its ref says offsets "
                                 f"{ref.first_offset}..{ref.last_offset}")  # fmt: skip
            run = max(1, read_entries)
            for first in range(0, info.last_entry_id + 1, run):
                yield await reader.read(first, min(info.last_entry_id, first + run - 1))
        finally:
            await reader.close()

    return runs


async def owner_source(
    ledgers: LedgerClient, owner: OwnerBytes, ref: LedgerRef
) -> Entries | None:
    """The owner's entries of the closed ledger cut at its last entry id, or None (read the bookies)."""
    if owner.entries(ref.ledger_id, 0) is None:
        return None  # nothing kept: no metadata read either
    info = await ledgers.ledger_info(ref.ledger_id)
    if info is None or info.state is not LedgerState.CLOSED:
        return None
    return owner.entries(ref.ledger_id, info.last_entry_id)


async def upload_stream(objects: ObjectStore, key: str, stream: SegmentStream) -> SegmentFooter:
    """Stream the segment to ``key`` (create-only); ObjectExists propagates with ``stream.footer`` set."""
    await objects.put_stream(key, stream.chunks(), if_absent=True)
    if stream.footer is None:  # pragma: no cover - chunks() always ends with the tail
        raise BuildError("segment stream ended without its footer")
    return stream.footer


def _append_all(writer: StreamingSegmentWriter, entries: Entries) -> None:
    for entry in entries:
        writer.append_entry(entry if isinstance(entry, bytes | memoryview) else memoryview(entry))
