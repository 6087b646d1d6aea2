"""Committed offsets: OffsetCommit, TxnOffsetCommit, OffsetFetch and OffsetDelete against one shard, as Kafka
validates them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from brokers.groups import records as rec
from brokers.groups.base import Group, GroupError, now_ms
from brokers.groups.classic import ClassicGroup
from brokers.groups.shard import GroupShard
from brokers.log.partition import OPEN_TXN

TopicPartition = tuple[str, int]
PartitionExists = Callable[[str, int], bool]
Verify = Callable[[], Awaitable[ErrorCode]]
"""KIP-890 part 1 for TxnOffsetCommit: is the offsets partition in the producer's open transaction (none: yes)."""


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """One partition of an OffsetCommit."""

    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str | None


@dataclass(frozen=True, slots=True)
class FetchedOffset:
    """One partition of an OffsetFetch answer (offset -1: nothing committed)."""

    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str
    error: ErrorCode = ErrorCode.none


async def commit(
    shard: GroupShard,
    group_id: str,
    member_id: str,
    group_instance_id: str | None,
    generation: int,
    partitions: Sequence[CommitRequest],
    exists: PartitionExists,
    api_version: int,
    retention_ms: int = -1,
) -> list[ErrorCode]:
    """Commit offsets; one error per partition, in order. A commit is answered only once durable."""
    group = shard.groups.get(group_id)
    created = False
    try:
        if group is None:
            if generation >= 0:
                if api_version >= 9:
                    raise GroupError(ErrorCode.group_id_not_found, f"group {group_id!r} does not exist")
                raise GroupError(ErrorCode.illegal_generation, f"group {group_id!r} does not exist")
            group = ClassicGroup(group_id, shard)  # a "simple" group: assign() consumers, admin tools
            shard.groups[group_id] = group
            created = True
        group.validate_offset_commit(member_id, group_instance_id, generation, api_version)
    except GroupError as e:
        return [e.code] * len(partitions)
    results: list[ErrorCode] = []
    records: list[tuple[bytes, bytes | None]] = []
    written: list[int] = []
    ts = now_ms()
    expire = ts + retention_ms if retention_ms >= 0 else -1
    limit = shard.config.offset_metadata_max_bytes
    for i, p in enumerate(partitions):
        if not exists(p.topic, p.partition):
            results.append(ErrorCode.unknown_topic_or_partition)
        elif p.metadata is not None and len(p.metadata.encode()) > limit:
            results.append(ErrorCode.offset_metadata_too_large)
        else:
            results.append(ErrorCode.none)
            value = rec.OffsetValue(p.offset, p.leader_epoch, p.metadata or "", ts, expire)
            records.append((rec.encode_offset_key(group_id, p.topic, p.partition), rec.encode_offset_value(value)))
            written.append(i)
    if records:
        try:
            write = shard.enqueue(records)
        except GroupError as e:
            write = asyncio.get_running_loop().create_future()
            write.set_exception(e)
        pending = shard.pending_commits.setdefault(group_id, set())
        pending.add(write)
        write.add_done_callback(lambda f: _done(shard, group_id, f))
        try:
            await asyncio.shield(write)
        except GroupError as e:
            for i in written:
                results[i] = e.code
    if created and group_id not in shard.offsets and shard.groups.get(group_id) is group:
        del shard.groups[group_id]  # nothing was committed: no group to remember
    return results


async def txn_commit(
    shard: GroupShard,
    group_id: str,
    member_id: str,
    group_instance_id: str | None,
    generation: int,
    producer: tuple[int, int],
    partitions: Sequence[CommitRequest],
    exists: PartitionExists,
    api_version: int,
    verify: Verify | None = None,
) -> list[ErrorCode]:
    """TxnOffsetCommit: the offsets written as ``producer``'s (id, epoch) transactional batch, pending until
    its transaction ends (txn_offsets.py); one error per partition, answered once durable.

    ``verify`` (KIP-890 part 1), when the producer has no transaction open on the offsets partition yet: asked
    with a verification guard from the partition log, which the append then requires, so a request delayed past
    its transaction's marker cannot open a transaction there that no marker would ever end (its offsets would
    stay pending for good). A group that does not exist is created as a simple group when the generation is -1
    (admin tools, assign() consumers), else ILLEGAL_GENERATION; a stale KIP-848 member epoch is
    ILLEGAL_GENERATION too (Kafka's codes).
    """
    guard: object | None = None
    if verify is not None:
        guard = shard.plog.verification_guard(producer[0])
        if guard is not OPEN_TXN:
            code = await verify()
            if code is not ErrorCode.none:
                shard.plog.forget_guard(producer[0], guard)
                return [code] * len(partitions)
    group = shard.groups.get(group_id)
    created = False
    try:
        if group is None:
            if generation >= 0:
                raise GroupError(ErrorCode.illegal_generation, f"group {group_id!r} does not exist")
            group = ClassicGroup(group_id, shard)
            shard.groups[group_id] = group
            created = True
        group.validate_offset_commit(member_id, group_instance_id, generation, api_version, transactional=True)
    except GroupError as e:
        code = ErrorCode.illegal_generation if e.code is ErrorCode.stale_member_epoch else e.code
        return [code] * len(partitions)
    results: list[ErrorCode] = []
    records: list[tuple[bytes, bytes | None]] = []
    written: list[int] = []
    ts = now_ms()
    limit = shard.config.offset_metadata_max_bytes
    for i, p in enumerate(partitions):
        if not exists(p.topic, p.partition):
            results.append(ErrorCode.unknown_topic_or_partition)
        elif p.metadata is not None and len(p.metadata.encode()) > limit:
            results.append(ErrorCode.offset_metadata_too_large)
        else:
            results.append(ErrorCode.none)
            value = rec.OffsetValue(p.offset, p.leader_epoch, p.metadata or "", ts)
            records.append((rec.encode_offset_key(group_id, p.topic, p.partition), rec.encode_offset_value(value)))
            written.append(i)
    if records:
        try:
            await shard.write_transactional(producer[0], producer[1], records, guard)
        except GroupError as e:
            for i in written:
                results[i] = e.code
    elif guard is not None and guard is not OPEN_TXN:
        shard.plog.forget_guard(producer[0], guard)
    if created and group_id not in shard.offsets and shard.groups.get(group_id) is group:
        del shard.groups[group_id]  # nothing committed yet: the commit marker creates it
    return results


def _done(shard: GroupShard, group_id: str, write: asyncio.Future[int]) -> None:
    pending = shard.pending_commits.get(group_id)
    if pending is not None:
        pending.discard(write)
        if not pending:
            del shard.pending_commits[group_id]
    if not write.cancelled():
        write.exception()  # retrieved here; the committer reports it


async def fetch(
    shard: GroupShard,
    group_id: str,
    topics: Sequence[tuple[str, Sequence[int]]] | None,
    member_id: str | None = None,
    member_epoch: int = -1,
    require_stable: bool = False,
) -> list[FetchedOffset]:
    """Committed offsets of ``topics`` (None: all of the group's); raises GroupError for the whole group.

    Waits for the group's commits already accepted but not yet durable, so a member that takes over a
    partition always sees the offset its previous owner committed before leaving. Offsets of open
    transactions are never returned; with ``require_stable`` (KIP-447) a partition that has one answers
    UNSTABLE_OFFSET_COMMIT (offset -1), which the client retries until the transaction ends.
    """
    pending = shard.pending_commits.get(group_id)
    if pending:
        await asyncio.wait(list(pending))
    group = shard.groups.get(group_id)
    if group is not None:
        group.validate_offset_fetch(member_id, member_epoch)
    committed = shard.offsets.get(group_id, {})
    unstable = shard.pending_txn.is_pending if require_stable else _never
    out: list[FetchedOffset] = []
    if topics is None:
        for (topic, partition), found in sorted(committed.items()):
            if unstable(group_id, topic, partition):
                out.append(FetchedOffset(topic, partition, -1, -1, "", ErrorCode.unstable_offset_commit))
            else:
                out.append(FetchedOffset(topic, partition, found.offset, found.leader_epoch, found.metadata))
        return out
    for topic, partitions in topics:
        for partition in partitions:
            c = committed.get((topic, partition))
            if unstable(group_id, topic, partition):
                out.append(FetchedOffset(topic, partition, -1, -1, "", ErrorCode.unstable_offset_commit))
            elif c is None:
                out.append(FetchedOffset(topic, partition, -1, -1, ""))
            else:
                out.append(FetchedOffset(topic, partition, c.offset, c.leader_epoch, c.metadata))
    return out


def _never(_group: str, _topic: str, _partition: int) -> bool:
    return False


async def delete(
    shard: GroupShard, group_id: str, partitions: Sequence[TopicPartition], exists: PartitionExists
) -> list[ErrorCode]:
    """OffsetDelete: one error per partition; raises GroupError for the whole group."""
    group: Group | None = shard.groups.get(group_id)
    if group is None or group.state_name == "Dead":
        raise GroupError(ErrorCode.group_id_not_found, f"group {group_id!r} does not exist")
    if not group.is_empty() and group.protocol_type != "consumer":
        raise GroupError(ErrorCode.non_empty_group, f"group {group_id!r} has members")
    committed = shard.offsets.get(group_id, {})
    results: list[ErrorCode] = []
    records: list[tuple[bytes, bytes | None]] = []
    written: list[int] = []
    for i, (topic, partition) in enumerate(partitions):
        if not exists(topic, partition):
            results.append(ErrorCode.unknown_topic_or_partition)
        elif not group.is_empty() and group.is_subscribed_to(topic):
            results.append(ErrorCode.group_subscribed_to_topic)
        else:
            results.append(ErrorCode.none)
            if (topic, partition) in committed:
                records.append((rec.encode_offset_key(group_id, topic, partition), None))
                written.append(i)
    if records:
        try:
            await shard.write(records)
        except GroupError as e:
            for i in written:
                results[i] = e.code
    return results
