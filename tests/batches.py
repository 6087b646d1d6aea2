"""Hand-built Kafka v2 record batches for unit tests (a short form of ``tests.segment_data.make_batch``)."""

from __future__ import annotations

from tests.segment_data import make_batch as _make_batch


def make_batch(records: int = 3, base_ts: int = 1_000, producer_id: int = -1, base_seq: int = -1) -> bytes:
    """A valid uncompressed v2 batch at offset 0 with ``records`` small records (timestamps base_ts + i)."""
    return _make_batch(
        0, records, base_ts, value_size=8, producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1, base_sequence=base_seq,
    )
