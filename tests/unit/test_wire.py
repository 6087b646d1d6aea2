"""The bookie wire codec (storage/bookie/wire.py): round trips, stream splitting, zero copies, bad input."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.bookie import wire

ROOT = Path(__file__).resolve().parents[2]
MSGPACK_INTS = st.integers(-(2**63), 2**64 - 1) | st.integers(-3, 300)

REQUESTS: list[wire.Request] = [
    wire.AddRequest(1, 7, 0, -1, 5, 0x1234ABCD, False, b"hello"),
    wire.AddRequest(2, 7, 1, 0, 5, 0, True, b""),
    wire.AddRequest(2**64 - 1, 2**63 - 1, 2**63 - 1, 2**63 - 2, 2**63 - 1, 0xFFFFFFFF, True, b"x" * 70000),
    wire.ReadRequest(3, 7, 1),
    wire.ReadRangeRequest(4, 7, 0, 99, 1 << 20),
    wire.ReadLacRequest(5, 7),
    wire.FenceRequest(6, 7),
    wire.DeleteLedgerRequest(7, 7),
    wire.HealthRequest(8),
]

RESPONSES: list[wire.Response] = [
    wire.Response(1, wire.Kind.ADD),
    wire.Response(3, wire.Kind.READ, entries=(wire.WireEntry(1, 10, 99, b"payload"),)),
    wire.Response(
        4, wire.Kind.READ_RANGE, entries=tuple(wire.WireEntry(i, 10 * i, i, bytes([i]) * i) for i in range(20))
    ),
    wire.Response(4, wire.Kind.READ_RANGE, entries=(wire.WireEntry(0, 0, 0, b""), wire.WireEntry(1, 0, 0, b""))),
    wire.Response(5, wire.Kind.READ_LAC, lac=-1),
    wire.Response(6, wire.Kind.FENCE, lac=41),
    wire.Response(7, wire.Kind.DELETE_LEDGER),
    wire.Response(8, wire.Kind.HEALTH, health={"bookie_id": "b", "ok": True, "entries": 3, "error": None}),
    wire.Response(9, wire.Kind.ADD, wire.Code.FENCED, "ledger 7 is fenced"),
    wire.Response(10, wire.Kind.READ, wire.Code.CORRUPT, "CRC-32C mismatch"),
    wire.Response(11, wire.Kind.READ_RANGE, wire.Code.NO_SUCH_ENTRY, "no"),
]


def joined(buffers: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def plain(message: wire.Request | wire.Response) -> object:
    """The message with payloads as bytes (decoded payloads are memoryviews), for comparison."""
    if isinstance(message, wire.AddRequest):
        return (type(message), message.request_id, message.ledger_id, message.entry_id, message.lac,
                message.ledger_length, message.crc, message.recovery, bytes(message.payload))  # fmt: skip
    if isinstance(message, wire.Response):
        entries = tuple((e.entry_id, e.ledger_length, e.crc, bytes(e.payload)) for e in message.entries)
        return (message.request_id, message.kind, message.code, message.message, entries, message.lac,
                message.health)  # fmt: skip
    return message


def test_the_codec_imports_no_asyncio() -> None:
    tree = ast.parse((ROOT / "storage/bookie/wire.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("asyncio", "socket", "selectors")}


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_requests_round_trip(request_: wire.Request) -> None:
    decoded = wire.RequestDecoder().feed(joined(wire.encode_request(request_)))
    assert len(decoded) == 1
    assert plain(decoded[0]) == plain(request_)


@pytest.mark.parametrize("response", RESPONSES, ids=lambda r: f"{r.kind.name}-{r.code.name}")
def test_responses_round_trip(response: wire.Response) -> None:
    decoded = wire.ResponseDecoder().feed(joined(wire.encode_response(response)))
    assert [plain(d) for d in decoded] == [plain(response)]


def test_payloads_are_not_copied() -> None:
    payload = memoryview(bytearray(b"p" * 100_000))
    buffers = wire.encode_request(wire.AddRequest(1, 2, 3, 2, 100_000, 0, False, payload))
    assert buffers[-1] is payload  # handed to writelines as is
    frame = joined(buffers)
    (add,) = wire.RequestDecoder().feed(frame)
    assert isinstance(add, wire.AddRequest) and isinstance(add.payload, memoryview)
    assert add.payload.obj is frame  # a view into the received bytes, not a copy
    entries = tuple(wire.WireEntry(i, i, i, payload) for i in range(3))
    out = wire.encode_response(wire.Response(9, wire.Kind.READ_RANGE, entries=entries))
    assert sum(1 for b in out if b is payload) == 3


def test_frame_layout() -> None:
    frame = joined(wire.encode_request(wire.AddRequest(5, 7, 1, 0, 3, 42, True, b"abc")))
    total, head_len = struct.unpack_from(">II", frame)
    assert total == len(frame) - 4
    header = msgpack.unpackb(frame[8 : 8 + head_len])
    assert header == [wire.VERSION, 1, 5, 7, 1, 0, 3, 42, wire.FLAG_RECOVERY, 3]
    assert frame[8 + head_len :] == b"abc"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_chunking_of_a_stream_gives_the_same_messages(data: st.DataObject) -> None:
    stream = b"".join(joined(wire.encode_request(r)) for r in REQUESTS)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = wire.RequestDecoder()
    got: list[object] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got.extend(plain(m) for m in decoder.feed(stream[start:cut]))
        start = cut
    assert got == [plain(r) for r in REQUESTS]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_wire_error(garbage: bytes) -> None:
    for decoder in (wire.RequestDecoder(max_frame_size=1 << 16), wire.ResponseDecoder(max_frame_size=1 << 16)):
        try:
            decoder.feed(garbage)
        except wire.WireError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(MSGPACK_INTS, st.text(max_size=5), st.none(), st.booleans(),
                          st.binary(max_size=5), st.lists(MSGPACK_INTS, max_size=3)), min_size=3, max_size=12),
       st.binary(max_size=20))  # fmt: skip
def test_well_framed_nonsense_headers_are_answered_or_rejected(fields: list[object], tail: bytes) -> None:
    head = msgpack.packb(fields)
    frame = struct.pack(">II", 4 + len(head) + len(tail), len(head)) + head + tail
    try:
        out = wire.RequestDecoder().feed(frame)
    except wire.WireError:
        return
    assert len(out) == 1
    try:
        wire.ResponseDecoder().feed(frame)
    except wire.WireError:
        pass


def test_bad_frames() -> None:
    with pytest.raises(wire.WireError, match="frame length"):
        wire.RequestDecoder(max_frame_size=1000).feed(struct.pack(">I", 1001))
    with pytest.raises(wire.WireError, match="frame length"):
        wire.RequestDecoder().feed(struct.pack(">I", 2) + b"xx")
    with pytest.raises(wire.WireError, match="header length"):
        wire.RequestDecoder().feed(struct.pack(">II", 8, 100) + b"abcd")
    with pytest.raises(wire.WireError, match="undecodable"):
        wire.RequestDecoder().feed(struct.pack(">II", 5, 1) + b"\xc1")
    head = msgpack.packb({"not": "an array"})
    with pytest.raises(wire.WireError, match="array"):
        wire.RequestDecoder().feed(struct.pack(">II", 4 + len(head), len(head)) + head)
    head = msgpack.packb([1, 1, "not an id"])
    with pytest.raises(wire.WireError, match="request id"):
        wire.RequestDecoder().feed(struct.pack(">II", 4 + len(head), len(head)) + head)
    # a half frame is simply waited for
    frame = joined(wire.encode_request(wire.ReadRequest(1, 2, 3)))
    decoder = wire.RequestDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert len(decoder.feed(frame[-1:])) == 1


def _frame(fields: list[object], tail: bytes = b"") -> bytes:
    head = msgpack.packb(fields)
    return struct.pack(">II", 4 + len(head) + len(tail), len(head)) + head + tail


@pytest.mark.parametrize(
    ("fields", "tail", "code", "match"),
    [
        ([2, 1, 9], b"", wire.Code.UNSUPPORTED_VERSION, "version 2"),
        ([1, 99, 9], b"", wire.Code.BAD_REQUEST, "unknown request kind"),
        ([1, 1, 9, 7, 0, -1, 3, 0, 0, 5], b"abc", wire.Code.BAD_REQUEST, "payload size"),
        ([1, 1, 9, -7, 0, -1, 3, 0, 0, 3], b"abc", wire.Code.BAD_REQUEST, "ledger id"),
        ([1, 1, 9, 7, 0, -1, 3, 2**32, 0, 3], b"abc", wire.Code.BAD_REQUEST, "crc"),
        ([1, 3, 9, 7, 5, 4, 100], b"", wire.Code.BAD_REQUEST, "empty"),
        ([1, 2, 9, 7], b"", wire.Code.BAD_REQUEST, "5 fields"),
        ([1, 5, 9, 7], b"junk", wire.Code.BAD_REQUEST, "unexpected payload"),
        ([1, 4, 9, True], b"", wire.Code.BAD_REQUEST, "ledger id"),
    ],
)
def test_unusable_requests_get_an_error_answer(fields: list[object], tail: bytes, code: wire.Code, match: str) -> None:
    (answer,) = wire.RequestDecoder().feed(_frame(fields, tail))
    assert isinstance(answer, wire.Response)
    assert answer.request_id == 9 and answer.code is code
    assert match in answer.message


def test_bad_responses_are_rejected() -> None:
    for fields, tail in [
        ([2, 1, 1, 0, ""], b""),  # another version
        ([1, 1, 1, 77, ""], b""),  # unknown code
        ([1, 2, 1, 0, "", [[0, 0, 0, 10]]], b"short"),  # payload runs past the frame
        ([1, 2, 1, 0, "", [[0, 0, 0, 1]]], b"long"),  # bytes left over
        ([1, 4, 1, 0, ""], b""),  # LAC missing
        ([1, 1, 1, 3, "err"], b"x"),  # an error with payload
    ]:
        with pytest.raises(wire.WireError):
            wire.ResponseDecoder().feed(_frame(fields, tail))
