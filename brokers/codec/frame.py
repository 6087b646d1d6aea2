"""Length-prefixed Kafka frames and request/response headers — sans-io: bytes in, bytes out.

No asyncio here (a test enforces it): the server feeds bytes in and writes out what this returns.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

_SIZE = struct.Struct(">i")
_HEADER_FIXED = struct.Struct(">hhi")


class FrameError(Exception):
    """The byte stream is not valid Kafka framing; the connection must be closed."""


class FrameTooLarge(FrameError):
    """A length prefix larger than the configured maximum request size (or negative)."""


class FrameDecoder:
    """Splits a byte stream into frames (without their 4-byte length prefix).

    Small reads are gathered in a bytearray; a large frame is collected as a list of chunks and joined
    once, so each byte is copied once on its way to a frame.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self._max = max_frame_bytes
        self._buf = bytearray()  # bytes not yet assigned to a frame body
        self._need = -1  # body size of the frame in progress, -1 while reading a length prefix
        self._chunks: list[bytes | bytearray | memoryview] = []  # body of the frame in progress
        self._have = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return every frame now complete. Raises FrameTooLarge."""
        frames: list[bytes] = []
        view = memoryview(data)
        while view:
            if self._need < 0:
                take = min(4 - len(self._buf), len(view))
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < 4:
                    break
                (size,) = _SIZE.unpack_from(self._buf, 0)
                self._buf.clear()
                if size < 0 or size > self._max:
                    raise FrameTooLarge(f"frame of {size} bytes (limit {self._max})")
                self._need = size
                self._chunks = []
                self._have = 0
            take = min(self._need - self._have, len(view))
            if take:
                self._chunks.append(view[:take])
                self._have += take
                view = view[take:]
            if self._have == self._need:
                chunks = self._chunks
                frames.append(bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks))
                self._chunks = []
                self._need = -1
                self._have = 0
        # Chunks still pending may be views of ``data``: keep copies, since the caller may reuse it.
        if self._chunks and isinstance(data, bytearray | memoryview):
            self._chunks = [bytes(c) for c in self._chunks]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf) + self._have


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The fixed start of every request header: enough to answer even an unsupported version."""

    api_key: int
    api_version: int
    correlation_id: int


def peek_request_head(frame: bytes) -> RequestHead:
    """Read api key, version and correlation id (the first 8 bytes of any request header)."""
    if len(frame) < _HEADER_FIXED.size:
        raise FrameError(f"request of {len(frame)} bytes is shorter than a request header")
    api_key, api_version, correlation_id = _HEADER_FIXED.unpack_from(frame, 0)
    return RequestHead(api_key, api_version, correlation_id)


def encode_response(
    correlation_id: int, flexible_header: bool, body: Sequence[bytes | bytearray | memoryview]
) -> list[bytes | bytearray | memoryview]:
    """Frame a response: size, correlation id, (empty tagged fields for header v1), body buffers.

    Returned as a list of buffers for ``writelines`` so the body is not copied again.
    """
    head_len = 5 if flexible_header else 4
    prefix = _SIZE.pack(head_len + sum(len(b) for b in body)) + _SIZE.pack(correlation_id)
    if flexible_header:
        prefix += b"\x00"
    return [prefix, *body]
