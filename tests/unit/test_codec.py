"""Sans-io codec: framing, request heads, the 61-byte batch header, offsets patching."""

from __future__ import annotations

import struct

import pytest

from brokers.codec import batch
from brokers.codec.chain import BufferChain, Chunks
from brokers.codec.frame import FrameDecoder, FrameTooLarge, encode_response, peek_request_head
from brokers.codec.records import record_timestamps
from tests.batches import make_batch


def test_decoder_splits_frames_across_chunks() -> None:
    dec = FrameDecoder(1024)
    stream = struct.pack(">i", 3) + b"abc" + struct.pack(">i", 2) + b"de"
    frames = []
    for i in range(len(stream)):
        frames += dec.feed(stream[i : i + 1])
    assert frames == [b"abc", b"de"]
    assert dec.buffered == 0


@pytest.mark.parametrize("size", [0x7FFFFFFF, -1, 1025])
def test_decoder_refuses_oversized_and_negative(size: int) -> None:
    with pytest.raises(FrameTooLarge):
        FrameDecoder(1024).feed(struct.pack(">i", size))


def test_request_head_and_response_framing() -> None:
    head = peek_request_head(struct.pack(">hhi", 18, 3, 42) + b"rest")
    assert (head.api_key, head.api_version, head.correlation_id) == (18, 3, 42)
    framed = b"".join(encode_response(42, True, [b"bo", b"dy"]))
    assert framed == struct.pack(">ii", 9, 42) + b"\x00body"
    assert b"".join(encode_response(7, False, [b"x"])) == struct.pack(">ii", 5, 7) + b"x"


def test_buffer_chain_keeps_large_buffers_by_reference() -> None:
    big = memoryview(bytes(100_000))
    chain = BufferChain()
    chain.write(b"ab")
    chain.write(b"cd")
    chain.write(Chunks([big, b"xy"]))
    chain.write(b"z")
    parts = chain.buffers()
    assert parts[0] == b"abcd" and parts[1] is big and parts[2] == b"xy" and parts[3] == b"z"
    assert chain.size == 4 + 100_002 + 1 == len(Chunks([b"abcd", big, b"xy", b"z"]))


def test_validate_accepts_good_batches_and_patches_offsets() -> None:
    data = bytearray(make_batch(3) + make_batch(2))
    headers = batch.validate(data)
    assert [h.records_count for h in headers] == [3, 2]
    end = batch.assign_offsets(data, headers, 100, 7)
    assert end == 105
    patched = batch.validate(data)  # the CRC does not cover offsets and epochs
    assert [(h.base_offset, h.leader_epoch) for h in patched] == [(100, 7), (103, 7)]


def test_validate_rejects_bad_crc_truncation_and_old_magic() -> None:
    good = bytearray(make_batch(3))
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    with pytest.raises(batch.CorruptBatch, match="CRC"):
        batch.validate(bad)
    with pytest.raises(batch.CorruptBatch):
        batch.validate(good[:-5])
    old = bytearray(good)
    old[16] = 1
    with pytest.raises(batch.UnsupportedMagic):
        batch.validate(old)
    with pytest.raises(batch.CorruptBatch):
        batch.validate(b"")


def test_sequences_and_record_timestamps() -> None:
    data = make_batch(4, base_ts=5_000, producer_id=9, base_seq=2147483646)
    (head,) = batch.validate(data)
    assert head.last_sequence == 1  # wraps like Kafka's
    assert record_timestamps(memoryview(data), head) == [(0, 5000), (1, 5001), (2, 5002), (3, 5003)]
