"""The broker-wide budget for fetch response memory, and what one request holds of it until written.

A fetch reads its batches into memory before the response goes out, and the response stays in memory
until the client reads it. Without a bound, clients that pipeline big fetches and never read their
answers make the broker hold everything they asked for. So a fetch reserves from one broker-wide budget
before it reads (``fetch.response.memory.bytes``), reads no more than it was granted (or, when the
budget is spent, its first batch only, so every consumer still makes progress), and the connection gives
the reservation back once the response is written or the connection closes.

The server sets ``current`` (a context variable) for each request it handles; handlers reserve through
it, and the server releases what the request holds. Without a server (handler unit tests) nothing is
budgeted.
"""

from __future__ import annotations

from contextvars import ContextVar


class ResponseMemory:
    """Bytes of fetch responses held in memory, broker-wide, against a limit (single event loop)."""

    __slots__ = ("limit", "peak", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    @property
    def available(self) -> int:
        return max(0, self.limit - self.used)

    def _add(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)


class Lease:
    """What one response holds of the budget: reserved before reading, settled to the bytes read."""

    __slots__ = ("_memory", "held")

    def __init__(self, memory: ResponseMemory) -> None:
        self._memory: ResponseMemory | None = memory
        self.held = 0

    def settle(self, actual: int) -> None:
        """Hold exactly ``actual`` bytes (the response's size; may exceed the grant by the first batch)."""
        if self._memory is None:  # released: the connection is gone
            return
        self._memory._add(actual - self.held)
        self.held = actual

    def grow_to(self, want: int) -> int:
        """Hold up to ``want`` bytes, as far as the budget allows; returns what is held now."""
        if self._memory is not None and want > self.held:
            self.settle(min(want, self.held + self._memory.available))
        return self.held

    def release(self) -> None:
        """Give everything back (idempotent)."""
        memory = self._memory
        if memory is None:
            return
        memory._add(-self.held)
        self.held = 0
        self._memory = None


class RequestMemory:
    """The leases one request took; the server releases them after writing its response."""

    __slots__ = ("leases", "memory")

    def __init__(self, memory: ResponseMemory) -> None:
        self.memory = memory
        self.leases: list[Lease] = []

    def reserve(self, want: int) -> Lease:
        """A lease of ``want`` bytes, or of what is left of the budget (0 when it is spent: the caller
        then reads its first batch only)."""
        lease = Lease(self.memory)
        lease.grow_to(want)
        self.leases.append(lease)
        return lease

    def release(self) -> None:
        for lease in self.leases:
            lease.release()
        self.leases.clear()


current: ContextVar[RequestMemory | None] = ContextVar("tidelog_request_memory", default=None)
