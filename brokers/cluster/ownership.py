"""Partition ownership: take a partition by one etcd transaction, release it only if it is still ours.

``take`` commits, atomically and only if both checks hold:

* ``owners/{topic_id}/{p}`` is absent, and is created bound to this broker's session lease, holding an
  OwnerRecord (node id, new epoch): if this broker dies its lease expires and the key vanishes with it;
* ``partitions/{topic_id}/{p}`` (the PartitionState, same codec as brokers/log/partition.py) is still at
  the version just read, and is written back with ``epoch + 1``.

So two brokers racing for one partition cannot both win (the owner key can be created once), and every
takeover gets a fresh, strictly larger epoch even when an old owner's lease has just expired. The epoch
bump is the first fence: a deposed owner's next compare-and-swap of the PartitionState fails (the log's
``_commit_state``/``_depose``); the bookie fencing of ledger recovery is the second, on the write path.

If the PartitionState changed between the read and the commit (the old owner committing its last state),
``take`` reads again and retries a few times; if the owner key exists it raises OwnedElsewhere at once.

``release`` deletes the owner key only if it still holds this broker's node id and lease (compare on its
version); a broker that does not own the partition is refused (NotOwner). A key that has already vanished
(lease expired) releases nothing and returns False.

The broker's follower (follower.py) loads a taken partition with ``LogManager.adopt(topic_id, p, epoch,
state_version)``, i.e. ``PartitionLog.load(taken=...)``: at exactly the epoch and state version returned by
``take``, without bumping the epoch a second time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from metadata.api import Check, MetadataError, MetadataStore, Put, VersionConflict
from metadata.keys import Keys
from metadata.models import OwnerRecord, PartitionState
from metadata.session import LeasedSession

TAKE_ATTEMPTS = 5


class OwnershipError(MetadataError):
    """Base of ownership refusals."""


class OwnedElsewhere(OwnershipError):
    """The partition has a live owner (``owner``: its record, None if it vanished while we looked)."""

    def __init__(self, topic_id: str, partition: int, owner: OwnerRecord | None) -> None:
        who = "unknown" if owner is None else f"node {owner.node_id} at epoch {owner.epoch}"
        super().__init__(f"{topic_id}/{partition} is owned by {who}")
        self.owner = owner


class NotOwner(OwnershipError):
    """Release refused: this broker does not own the partition."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A partition this broker took: its new epoch and the versions of the keys the commit wrote."""

    topic_id: str
    partition: int
    epoch: int
    state: PartitionState
    state_version: int
    """Version of the PartitionState key after the take (the log's next compare-and-swap starts here)."""
    owner_version: int


class PartitionOwnership:
    """Takes and releases partitions for one broker (node id + session lease)."""

    def __init__(self, store: MetadataStore, keys: Keys, node_id: int, session: LeasedSession) -> None:
        self._store = store
        self._keys = keys
        self.node_id = node_id
        self._session = session

    async def owner_of(self, topic_id: str, partition: int) -> OwnerRecord | None:
        found = await self._store.get(self._keys.owner(topic_id, partition))
        return None if found is None else OwnerRecord.decode(found.value)

    async def take(self, topic_id: str, partition: int) -> Taken:
        """Own the partition and bump its epoch in one transaction (module docstring); returns the new epoch."""
        owner_key = self._keys.owner(topic_id, partition)
        state_key = self._keys.partition(topic_id, partition)
        for _ in range(TAKE_ATTEMPTS):
            lease_id = self._session.lease_id  # SessionLost if the lease is gone: never take without one
            current = await self._store.get(state_key)
            if current is None:
                state, version = PartitionState(epoch=0), 0
            else:
                state, version = PartitionState.decode(current.value), current.version
            state = replace(state, epoch=state.epoch + 1)
            record = OwnerRecord(self.node_id, state.epoch)
            try:
                revision = await self._store.commit(
                    [Check(owner_key, 0), Check(state_key, version)],
                    [Put(owner_key, record.encode(), lease=lease_id), Put(state_key, state.encode())],
                )
            except VersionConflict:
                owner = await self.owner_of(topic_id, partition)
                if owner is not None:
                    raise OwnedElsewhere(topic_id, partition, owner) from None
                continue  # the state moved (an old owner's last commit): read it again
            return Taken(topic_id, partition, state.epoch, state, revision, revision)
        raise OwnedElsewhere(topic_id, partition, await self.owner_of(topic_id, partition))

    async def release(self, topic_id: str, partition: int) -> bool:
        """Delete the owner key if it is ours; False if it had already vanished; NotOwner if someone else's."""
        key = self._keys.owner(topic_id, partition)
        found = await self._store.get(key)
        if found is None:
            return False
        record = OwnerRecord.decode(found.value)
        lease = self._session.last_lease_id  # a lost lease's key may linger until it expires: still ours
        if record.node_id != self.node_id or found.lease is None or found.lease != lease:
            raise NotOwner(f"{topic_id}/{partition} is owned by node {record.node_id}, not by {self.node_id}")
        try:
            return await self._store.delete(key, expected_version=found.version)
        except VersionConflict:
            raise NotOwner(f"{topic_id}/{partition} changed owner while being released") from None
