"""How offload and retention change a partition's managed-log state: the PartitionStateAccess seam.

Every change is "apply a function to the current PartitionState and commit the result, together with other
puts, deletes and checks, in one atomic metadata commit". The owning broker's partition log caches the
state and its version and commits by compare-and-swap; it provides its own access (under its lock, updating
its cache) so offload commits never make its next CAS fail. ``StoreStateAccess`` is the stand-alone one:
read, apply, CAS, and on a conflict read again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from metadata.api import Check, MetadataStore, Put, VersionConflict
from metadata.keys import Keys
from metadata.models import PartitionState

StateChange = Callable[[PartitionState], PartitionState | None]
"""The new state, or None to commit nothing."""


class PartitionMoved(Exception):
    """The partition's epoch changed: another broker owns it now, so this one must not change it."""


class PartitionStateAccess(Protocol):
    """Reads and atomically changes one partition's state."""

    async def current(self) -> PartitionState:
        """The state as it is now."""
        ...

    async def update(
        self,
        change: StateChange,
        *,
        checks: Sequence[Check] = (),
        puts: Sequence[Put] = (),
        deletes: Sequence[str] = (),
    ) -> PartitionState | None:
        """Commit ``change(current)`` with ``puts`` and ``deletes`` atomically, if every check in ``checks``
        holds; returns the committed state, or None (nothing written) when ``change`` returns None.

        A concurrent change of the partition key itself is retried (``change`` is applied to the new
        state); a failed check in ``checks`` raises VersionConflict.
        """
        ...


class StoreStateAccess:
    """PartitionStateAccess straight on the MetadataStore (compare-and-swap, re-read on conflict).

    With ``epoch`` set, a state with another epoch raises PartitionMoved instead of being changed.
    """

    def __init__(
        self,
        store: MetadataStore,
        keys: Keys,
        topic_id: str,
        partition: int,
        *,
        epoch: int | None = None,
        attempts: int = 100,
    ) -> None:
        self._store = store
        self._key = keys.partition(topic_id, partition)
        self._epoch = epoch
        self._attempts = attempts

    async def _read(self) -> tuple[PartitionState, int]:
        got = await self._store.get(self._key)
        if got is None:
            return PartitionState(), 0
        state = PartitionState.decode(got.value)
        if self._epoch is not None and state.epoch != self._epoch:
            raise PartitionMoved(f"{self._key}: epoch {state.epoch}, expected {self._epoch}")
        return state, got.version

    async def current(self) -> PartitionState:
        return (await self._read())[0]

    async def update(
        self,
        change: StateChange,
        *,
        checks: Sequence[Check] = (),
        puts: Sequence[Put] = (),
        deletes: Sequence[str] = (),
    ) -> PartitionState | None:
        for _attempt in range(self._attempts):
            state, version = await self._read()
            new = change(state)
            if new is None:
                return None
            try:
                await self._store.commit(
                    [*checks, Check(self._key, version)], [*puts, Put(self._key, new.encode())], deletes
                )
            except VersionConflict:
                now = await self._store.get(self._key)
                if (0 if now is None else now.version) != version:
                    continue  # the partition state moved: apply the change to the new one
                raise
            return new
        raise VersionConflict(f"{self._key}: still changing after {self._attempts} attempts")
