"""Zero-copy response bodies: a kio write target that keeps large buffers by reference.

kio writes a records field with ``len(value)`` then ``buffer.write(value)``; giving it a ``Chunks``
(the fetched batches, unjoined) and a ``BufferChain`` as the buffer sends the batches to the socket
without joining or copying them.
"""

from __future__ import annotations

from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview
_LARGE = 16 * 1024


class Chunks:
    """Several buffers that stand for one bytes value."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: Sequence[Buffer]) -> None:
        self.parts = list(parts)
        self.size = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self.size


class BufferChain:
    """Collects written data: small writes are packed together, large ones kept as they are."""

    def __init__(self) -> None:
        self._parts: list[Buffer] = []
        self._small = bytearray()
        self.size = 0

    def write(self, data: Buffer | Chunks) -> int:
        if isinstance(data, Chunks):
            self._flush()
            self._parts.extend(data.parts)
            n = data.size
        elif len(data) >= _LARGE:
            self._flush()
            self._parts.append(data)
            n = len(data)
        else:
            self._small += data
            n = len(data)
        self.size += n
        return n

    def _flush(self) -> None:
        if self._small:
            self._parts.append(bytes(self._small))
            self._small = bytearray()

    def buffers(self) -> list[Buffer]:
        """Everything written, in order."""
        self._flush()
        return self._parts
