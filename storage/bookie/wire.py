"""The bookie wire protocol: a sans-io codec (no sockets, no asyncio) for requests and responses.

A frame (see docs/data-formats.md, "Bookie wire protocol")::

    frame length u32 | header length u32 | header: a msgpack array | payloads, raw, back to back

``frame length`` counts every byte after itself. The header starts ``[version, kind, request id, ...]``;
entry payloads are never msgpack-encoded: the header gives their sizes and they follow it byte for byte,
so encoding hands the caller's buffers to ``writelines`` and decoding slices them out of the frame
(a memoryview), with no copy either way. Requests carry a request id that their response repeats;
responses may come back in any order. Errors travel as codes (``Code``) with a message.

``encode_*`` functions return a list of buffers (write them in order); ``RequestDecoder`` and
``ResponseDecoder`` take bytes as they arrive and give back whole messages. Anything malformed raises
``WireError``: the connection it came from can no longer be trusted and should be closed.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

VERSION = 1
"""The protocol version this codec speaks (the first header field of every frame)."""

MAX_FRAME_SIZE = 128 * 1024 * 1024
"""Default largest frame a decoder accepts (an entry is at most a produce request's partition data)."""

_LEN = struct.Struct(">I")
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_PREFIX = struct.Struct(">II")
PREFIX_SIZE = _PREFIX.size  # 8
_U64 = 1 << 64
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


class Kind(IntEnum):
    """Request kinds; a response repeats its request's kind."""

    ADD = 1
    READ = 2
    READ_RANGE = 3
    READ_LAC = 4
    FENCE = 5
    DELETE_LEDGER = 6
    HEALTH = 7


class Code(IntEnum):
    """Outcome of a request, carried in every response."""

    OK = 0
    FENCED = 1  # the ledger is fenced: adds without the recovery flag are refused
    NO_SUCH_ENTRY = 2
    NO_SUCH_LEDGER = 3  # deleted on this bookie
    CORRUPT = 4  # a CRC-32C did not hold (the stored entry, or the add's payload as received)
    UNAVAILABLE = 5  # the bookie cannot serve (closed, journal failed, shutting down)
    BAD_REQUEST = 6  # the request was well framed but its fields make no sense
    UNSUPPORTED_VERSION = 7  # the message names the server's version
    INTERNAL = 8  # anything else went wrong on the bookie
    DISK = 9  # the bookie's disk is full or failing: nothing was written; clears once it takes writes again


FLAG_RECOVERY = 0x01
"""ADD flag: a recovery write, taken even on a fenced ledger."""


class WireError(Exception):
    """A frame that cannot be decoded: close the connection it came from."""


# --- messages -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AddRequest:
    """Store entry ``entry_id`` of ``ledger_id`` durably."""

    request_id: int
    ledger_id: int
    entry_id: int
    lac: int
    ledger_length: int
    crc: int
    recovery: bool
    payload: bytes | memoryview


@dataclass(frozen=True, slots=True)
class ReadRequest:
    request_id: int
    ledger_id: int
    entry_id: int


@dataclass(frozen=True, slots=True)
class ReadRangeRequest:
    """Consecutive entries ``first..last`` (the bookie may return fewer, at least one)."""

    request_id: int
    ledger_id: int
    first: int
    last: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class ReadLacRequest:
    request_id: int
    ledger_id: int


@dataclass(frozen=True, slots=True)
class FenceRequest:
    request_id: int
    ledger_id: int


@dataclass(frozen=True, slots=True)
class DeleteLedgerRequest:
    request_id: int
    ledger_id: int


@dataclass(frozen=True, slots=True)
class HealthRequest:
    request_id: int


Request = (
    AddRequest | ReadRequest | ReadRangeRequest | ReadLacRequest | FenceRequest | DeleteLedgerRequest | HealthRequest
)


@dataclass(frozen=True, slots=True)
class WireEntry:
    """An entry in a read response, with the CRC-32C the bookie stored for it (the reader checks it)."""

    entry_id: int
    ledger_length: int
    crc: int
    payload: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Response:
    """A response: ``code`` OK with the kind's result, or an error code and message.

    Results: READ and READ_RANGE fill ``entries``; READ_LAC and FENCE fill ``lac``; HEALTH fills
    ``health`` (a flat map of the bookie's self-report).
    """

    request_id: int
    kind: Kind
    code: Code = Code.OK
    message: str = ""
    entries: tuple[WireEntry, ...] = ()
    lac: int = -1
    health: dict[str, Any] | None = None


# --- encoding -------------------------------------------------------------------------------------
def _size(buf: bytes | memoryview) -> int:
    return len(buf) if isinstance(buf, bytes) else buf.nbytes


def _frame(header: list[Any], payloads: Sequence[bytes | memoryview] = ()) -> list[bytes | memoryview]:
    head: bytes = _packb(header)
    total = 4 + len(head)
    out: list[bytes | memoryview] = [b""]
    for p in payloads:
        n = len(p) if isinstance(p, bytes) else p.nbytes
        if n:
            total += n
            out.append(p)
    out[0] = _PREFIX.pack(total, len(head)) + head
    return out


def encode_request(request: Request) -> list[bytes | memoryview]:
    """The frame of ``request`` as buffers to write in order (the payload is referenced, not copied)."""
    rid = request.request_id
    if isinstance(request, AddRequest):
        flags = FLAG_RECOVERY if request.recovery else 0
        header = [
            VERSION, Kind.ADD, rid, request.ledger_id, request.entry_id, request.lac, request.ledger_length,
            request.crc, flags, _size(request.payload),
        ]  # fmt: skip
        return _frame(header, (request.payload,))
    if isinstance(request, ReadRequest):
        return _frame([VERSION, Kind.READ, rid, request.ledger_id, request.entry_id])
    if isinstance(request, ReadRangeRequest):
        return _frame(
            [VERSION, Kind.READ_RANGE, rid, request.ledger_id, request.first, request.last, request.max_bytes]
        )
    if isinstance(request, ReadLacRequest):
        return _frame([VERSION, Kind.READ_LAC, rid, request.ledger_id])
    if isinstance(request, FenceRequest):
        return _frame([VERSION, Kind.FENCE, rid, request.ledger_id])
    if isinstance(request, DeleteLedgerRequest):
        return _frame([VERSION, Kind.DELETE_LEDGER, rid, request.ledger_id])
    return _frame([VERSION, Kind.HEALTH, rid])


def encode_response(response: Response) -> list[bytes | memoryview]:
    """The frame of ``response`` as buffers to write in order (payloads referenced, not copied)."""
    header: list[Any] = [VERSION, response.kind, response.request_id, response.code, response.message]
    payloads: list[bytes | memoryview] = []
    if response.code == Code.OK:
        kind = response.kind
        if kind in (Kind.READ, Kind.READ_RANGE):
            header.append([[e.entry_id, e.ledger_length, e.crc, _size(e.payload)] for e in response.entries])
            payloads = [e.payload for e in response.entries]
        elif kind in (Kind.READ_LAC, Kind.FENCE):
            header.append(response.lac)
        elif kind is Kind.HEALTH:
            header.append(response.health or {})
    return _frame(header, payloads)


def error_response(request_id: int, kind: Kind, code: Code, message: str) -> Response:
    """A response carrying an error."""
    return Response(request_id, kind, code, message)


# --- decoding -------------------------------------------------------------------------------------
def _int(value: Any, what: str, lo: int = _I64_MIN, hi: int = _I64_MAX) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise WireError(f"{what}: expected an integer in [{lo}, {hi}], got {value!r}")
    return value


class _FrameSplitter:
    """Cuts a byte stream into frames: (header fields, the bytes after the header).

    Chunks are kept as received; a frame lying inside one chunk is a memoryview of it (no copy), one
    spanning chunks is joined once.
    """

    def __init__(self, max_frame_size: int) -> None:
        self._max = max_frame_size
        self._chunks: deque[bytes] = deque()
        self._pos = 0  # consumed bytes of the first chunk
        self._have = 0  # buffered bytes not consumed
        self._need = 0  # length of the frame being gathered (0: reading the length prefix)

    def feed(self, data: bytes) -> list[tuple[list[Any], memoryview]]:
        if data:
            self._chunks.append(data)
            self._have += len(data)
        frames: list[tuple[list[Any], memoryview]] = []
        while True:
            if not self._need:
                if self._have < 4:
                    return frames
                first = self._chunks[0]
                if len(first) - self._pos >= 4:  # the usual case: no slicing
                    (length,) = _LEN.unpack_from(first, self._pos)
                    self._pos += 4
                    self._have -= 4
                    if self._pos == len(first):
                        self._chunks.popleft()
                        self._pos = 0
                else:
                    (length,) = _LEN.unpack(self._take(4))
                if length < 4 or length > self._max:
                    raise WireError(f"frame length {length} outside 4..{self._max}")
                self._need = length
            if self._have < self._need:
                return frames
            body = self._take(self._need)
            self._need = 0
            frames.append(_split(body))

    def _take(self, n: int) -> memoryview:
        """Remove and return the next ``n`` buffered bytes (``n`` <= buffered)."""
        first = self._chunks[0]
        pos = self._pos
        if len(first) - pos >= n:
            out = memoryview(first)[pos : pos + n]
            self._pos = pos + n
            if self._pos == len(first):
                self._chunks.popleft()
                self._pos = 0
            self._have -= n
            return out
        parts: list[memoryview] = []
        got = 0
        while got < n:
            chunk = self._chunks[0]
            avail = len(chunk) - self._pos
            if got + avail <= n:
                parts.append(memoryview(chunk)[self._pos :])
                self._chunks.popleft()
                self._pos = 0
                got += avail
            else:
                cut = n - got
                parts.append(memoryview(chunk)[self._pos : self._pos + cut])
                self._pos += cut
                got = n
        self._have -= n
        return memoryview(b"".join(parts))


def _split(body: memoryview) -> tuple[list[Any], memoryview]:
    (head_len,) = _LEN.unpack_from(body)
    if head_len > body.nbytes - 4:
        raise WireError(f"header length {head_len} exceeds the frame ({body.nbytes - 4} bytes)")
    try:
        header = msgpack.unpackb(body[4 : 4 + head_len], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types on garbage
        raise WireError(f"undecodable header: {exc!r}") from None
    if not isinstance(header, list) or len(header) < 3:
        raise WireError("the header is not an array of at least [version, kind, request id]")
    return header, body[4 + head_len :]


class RequestDecoder:
    """Bytes in, requests out (the bookie server's side).

    ``feed`` returns whole requests, and for frames that are well formed but unusable (unknown version or
    kind, nonsensical fields) a ready error Response to send back instead. Raises WireError when the
    stream itself is broken.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._frames = _FrameSplitter(max_frame_size)

    def feed(self, data: bytes) -> list[Request | Response]:
        return [_request(header, rest) for header, rest in self._frames.feed(data)]


def _request(h: list[Any], rest: memoryview) -> Request | Response:
    version, kind_no, rid = h[0], h[1], _int(h[2], "request id", 0, _U64 - 1)
    try:
        kind = Kind(kind_no)
    except ValueError:
        return error_response(rid, Kind.HEALTH, Code.BAD_REQUEST, f"unknown request kind {kind_no!r}")
    if version != VERSION:
        message = f"protocol version {version!r} unsupported; this bookie speaks {VERSION}"
        return error_response(rid, kind, Code.UNSUPPORTED_VERSION, message)
    try:
        if kind is Kind.ADD:
            if len(h) != 10:
                raise WireError("ADD header needs 10 fields")
            size = _int(h[9], "payload size", 0)
            if size != rest.nbytes:
                raise WireError(f"ADD payload size {size} but {rest.nbytes} bytes follow the header")
            flags = _int(h[8], "flags", 0, 255)
            return AddRequest(
                rid, _int(h[3], "ledger id", 0), _int(h[4], "entry id", 0), _int(h[5], "lac", -1),
                _int(h[6], "ledger length", 0), _int(h[7], "crc", 0, 0xFFFFFFFF), bool(flags & FLAG_RECOVERY), rest,
            )  # fmt: skip
        if rest.nbytes:
            raise WireError(f"{kind.name} carries {rest.nbytes} unexpected payload bytes")
        if kind is Kind.HEALTH:
            return HealthRequest(rid)
        if len(h) < 4:
            raise WireError(f"{kind.name} header needs a ledger id")
        ledger_id = _int(h[3], "ledger id", 0)
        if kind is Kind.READ:
            if len(h) != 5:
                raise WireError("READ header needs 5 fields")
            return ReadRequest(rid, ledger_id, _int(h[4], "entry id", 0))
        if kind is Kind.READ_RANGE:
            if len(h) != 7:
                raise WireError("READ_RANGE header needs 7 fields")
            first, last = _int(h[4], "first", 0), _int(h[5], "last", 0)
            if last < first:
                raise WireError(f"READ_RANGE {first}..{last} is empty")
            return ReadRangeRequest(rid, ledger_id, first, last, _int(h[6], "max bytes", 1))
        if len(h) != 4:
            raise WireError(f"{kind.name} header needs 4 fields")
        if kind is Kind.READ_LAC:
            return ReadLacRequest(rid, ledger_id)
        if kind is Kind.FENCE:
            return FenceRequest(rid, ledger_id)
        return DeleteLedgerRequest(rid, ledger_id)
    except WireError as exc:  # framing held: answer this request, keep the connection
        return error_response(rid, kind, Code.BAD_REQUEST, str(exc))


class ResponseDecoder:
    """Bytes in, responses out (the client's side). Raises WireError on anything malformed."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._frames = _FrameSplitter(max_frame_size)

    def feed(self, data: bytes) -> list[Response]:
        return [_response(header, rest) for header, rest in self._frames.feed(data)]


def _response(h: list[Any], rest: memoryview) -> Response:
    if h[0] != VERSION:
        raise WireError(f"response in protocol version {h[0]!r}; this client speaks {VERSION}")
    if len(h) < 5:
        raise WireError("a response header needs [version, kind, request id, code, message]")
    rid = _int(h[2], "request id", 0, _U64 - 1)
    try:
        kind, code = Kind(h[1]), Code(h[3])
    except ValueError:
        raise WireError(f"unknown response kind {h[1]!r} or code {h[3]!r}") from None
    message = h[4] if isinstance(h[4], str) else repr(h[4])
    if code != Code.OK:
        if rest.nbytes:
            raise WireError("an error response carries payload bytes")
        return Response(rid, kind, code, message)
    if kind in (Kind.READ, Kind.READ_RANGE):
        if len(h) != 6 or not isinstance(h[5], list):
            raise WireError(f"{kind.name} response needs its entry list")
        entries: list[WireEntry] = []
        pos = 0
        for item in h[5]:
            if not isinstance(item, list) or len(item) != 4:
                raise WireError("an entry descriptor is [entry id, ledger length, crc, size]")
            size = _int(item[3], "entry size", 0)
            if pos + size > rest.nbytes:
                raise WireError("entry payloads run past the frame")
            entries.append(
                WireEntry(
                    _int(item[0], "entry id", 0), _int(item[1], "ledger length", 0),
                    _int(item[2], "crc", 0, 0xFFFFFFFF), rest[pos : pos + size],
                )
            )  # fmt: skip
            pos += size
        if pos != rest.nbytes:
            raise WireError(f"{rest.nbytes - pos} bytes after the last entry payload")
        return Response(rid, kind, code, message, entries=tuple(entries))
    if rest.nbytes:
        raise WireError(f"{kind.name} response carries unexpected payload bytes")
    if kind in (Kind.READ_LAC, Kind.FENCE):
        if len(h) != 6:
            raise WireError(f"{kind.name} response needs a LAC")
        return Response(rid, kind, code, message, lac=_int(h[5], "lac", -1))
    if kind is Kind.HEALTH:
        if len(h) != 6 or not isinstance(h[5], dict):
            raise WireError("HEALTH response needs a map")
        return Response(rid, kind, code, message, health=h[5])
    return Response(rid, kind, code, message)
