"""The ACL matrix: for each Kafka API, the (resource, operation) pairs a principal needs, and the error it gets
without each of them. Table-driven so that the same table runs per principal: here in-process, as User:alice
(the request context's principal) against a real Broker over the in-memory metadata store with
``authorizer.class.name`` set and ``allow.everyone.if.no.acl.found`` off; once SASL lands the table can drive
real clients per principal. For every row: with every needed ACL granted the answer carries no authorization
error; with any one of them missing it carries that resource type's authorization error; a super user needs
none.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import pytest
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from brokers.broker import Broker
from brokers.config import BrokerConfig
from brokers.handlers import (
    add_offsets_to_txn,
    add_partitions_to_txn,
    alter_configs,
    alter_partition_reassignments,
    alter_replica_log_dirs,
    consumer_group_describe,
    consumer_group_heartbeat,
    create_acls,
    create_partitions,
    create_topics,
    delete_acls,
    delete_groups,
    delete_records,
    delete_topics,
    describe_acls,
    describe_configs,
    describe_groups,
    describe_log_dirs,
    describe_producers,
    describe_topic_partitions,
    describe_transactions,
    elect_leaders,
    end_txn,
    fetch,
    find_coordinator,
    heartbeat,
    incremental_alter_configs,
    init_producer_id,
    join_group,
    leave_group,
    list_offsets,
    list_partition_reassignments,
    offset_commit,
    offset_delete,
    offset_fetch,
    offset_for_leader_epoch,
    produce,
    sync_group,
    txn_offset_commit,
    write_txn_markers,
)  # fmt: skip
from brokers.handlers.base import RequestContext
from brokers.security.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    AclOperation,
    AclPermission,
    PatternType,
    ResourceType,
)
from brokers.security.principal import KafkaPrincipal
from metadata.embedded import EmbeddedMetadataStore
from storage.ledger.api import LedgerClient
from tests.memory_ledgers import MemoryLedgerClient
from tests.request_samples import SAMPLE_GROUP, SAMPLE_TOPIC, build_entity

pytestmark = pytest.mark.asyncio
ALICE = KafkaPrincipal("User", "alice")
ADMIN = KafkaPrincipal("User", "admin")
T, G, TXN = SAMPLE_TOPIC, SAMPLE_GROUP, "sample"  # the names build_entity(full=True) puts in requests
LISTED = "sample"  # a group named in a list of strings (DescribeGroups, DeleteGroups...)
TOPIC, GROUP, CLUSTER = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
TXID = ResourceType.TRANSACTIONAL_ID
Op = AclOperation
DENIED = {
    TOPIC: ErrorCode.topic_authorization_failed,
    GROUP: ErrorCode.group_authorization_failed,
    CLUSTER: ErrorCode.cluster_authorization_failed,
    TXID: ErrorCode.transactional_id_authorization_failed,
}
AUTH_ERRORS = frozenset(DENIED.values())
ANSWER_TIMEOUT_S = 30.0  # hang guard only

Need = tuple[ResourceType, str, AclOperation]


@dataclass(frozen=True)
class Row:
    """One API: the request to send and every (resource, operation) it needs."""

    module: ModuleType
    version: int
    needs: tuple[Need, ...]
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Fields to set wherever they occur in the request (nested too)."""
    full: bool = True
    """Every field filled (build_entity); False: minimal, one entry per list (no duplicate names)."""
    extra: tuple[Need, ...] = ()
    """Granted in every case (what the API needs beyond what this row checks)."""

    @property
    def id(self) -> str:
        return f"{self.module.__name__.rsplit('.', 1)[-1]}-v{self.version}"


def cfg(resource_type: int) -> dict[str, Any]:
    return {"resource_type": resource_type, "resource_name": T}


BROKER_1 = {"resource_type": 4, "resource_name": "1"}
MATRIX: tuple[Row, ...] = (
    Row(produce, 9, ((TOPIC, T, Op.WRITE),), {"transactional_id": None}),
    Row(fetch, 12, ((TOPIC, T, Op.READ),)),
    Row(list_offsets, 7, ((TOPIC, T, Op.DESCRIBE),)),
    Row(offset_for_leader_epoch, 4, ((TOPIC, T, Op.DESCRIBE),)),
    Row(describe_topic_partitions, 0, ((TOPIC, T, Op.DESCRIBE),), {"cursor": None}),
    Row(create_topics, 7, ((TOPIC, T, Op.CREATE),), full=False),
    Row(delete_topics, 5, ((TOPIC, T, Op.DELETE),), {"topic_names": (T,)}, full=False),
    Row(create_partitions, 3, ((TOPIC, T, Op.ALTER),), full=False),
    Row(delete_records, 2, ((TOPIC, T, Op.DELETE),)),
    Row(describe_producers, 0, ((TOPIC, T, Op.READ),)),
    Row(describe_configs, 4, ((TOPIC, T, Op.DESCRIBE_CONFIGS),), cfg(2)),
    Row(describe_configs, 4, ((CLUSTER, CLUSTER_NAME, Op.DESCRIBE_CONFIGS),), BROKER_1),
    Row(alter_configs, 2, ((TOPIC, T, Op.ALTER_CONFIGS),), cfg(2), full=False),
    Row(incremental_alter_configs, 1, ((TOPIC, T, Op.ALTER_CONFIGS),), cfg(2), full=False),
    Row(join_group, 5, ((GROUP, G, Op.READ),)),
    Row(sync_group, 5, ((GROUP, G, Op.READ),)),
    Row(heartbeat, 4, ((GROUP, G, Op.READ),)),
    Row(leave_group, 4, ((GROUP, G, Op.READ),)),
    Row(consumer_group_heartbeat, 0, ((GROUP, G, Op.READ),)),
    Row(describe_groups, 5, ((GROUP, LISTED, Op.DESCRIBE),)),
    Row(consumer_group_describe, 0, ((GROUP, LISTED, Op.DESCRIBE),)),
    Row(delete_groups, 2, ((GROUP, LISTED, Op.DELETE),)),
    Row(offset_fetch, 8, ((GROUP, G, Op.DESCRIBE), (TOPIC, T, Op.DESCRIBE))),
    Row(offset_commit, 8, ((GROUP, G, Op.READ), (TOPIC, T, Op.READ))),
    Row(offset_delete, 0, ((GROUP, G, Op.DELETE),), extra=((TOPIC, T, Op.READ),)),
    Row(find_coordinator, 3, ((GROUP, G, Op.DESCRIBE),), {"key": G, "key_type": 0}),
    Row(find_coordinator, 3, ((TXID, TXN, Op.DESCRIBE),), {"key": TXN, "key_type": 1}),
    Row(init_producer_id, 4, ((TXID, TXN, Op.WRITE),)),
    Row(add_partitions_to_txn, 3, ((TXID, TXN, Op.WRITE), (TOPIC, T, Op.WRITE))),
    Row(add_offsets_to_txn, 3, ((TXID, TXN, Op.WRITE), (GROUP, G, Op.READ))),
    Row(txn_offset_commit, 3, ((TXID, TXN, Op.WRITE), (GROUP, G, Op.READ), (TOPIC, T, Op.READ))),
    Row(end_txn, 3, ((TXID, TXN, Op.WRITE),)),
    Row(describe_transactions, 0, ((TXID, TXN, Op.DESCRIBE),)),
    Row(write_txn_markers, 1, ((CLUSTER, CLUSTER_NAME, Op.CLUSTER_ACTION),)),
    Row(elect_leaders, 2, ((CLUSTER, CLUSTER_NAME, Op.ALTER),)),
    Row(alter_partition_reassignments, 0, ((CLUSTER, CLUSTER_NAME, Op.ALTER),)),
    Row(list_partition_reassignments, 0, ((CLUSTER, CLUSTER_NAME, Op.DESCRIBE),)),
    Row(describe_log_dirs, 4, ((CLUSTER, CLUSTER_NAME, Op.DESCRIBE),)),
    Row(alter_replica_log_dirs, 2, ((CLUSTER, CLUSTER_NAME, Op.ALTER),)),
    Row(create_acls, 3, ((CLUSTER, CLUSTER_NAME, Op.ALTER),)),
    Row(describe_acls, 3, ((CLUSTER, CLUSTER_NAME, Op.DESCRIBE),)),
    Row(delete_acls, 3, ((CLUSTER, CLUSTER_NAME, Op.ALTER),)),
)


def _retarget(value: Any, fields: dict[str, Any]) -> Any:
    """``value`` with every field named in ``fields`` set, at any depth."""
    if isinstance(value, tuple):
        return tuple(_retarget(v, fields) for v in value)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    changes = {
        f.name: fields[f.name] if f.name in fields else _retarget(getattr(value, f.name), fields)
        for f in dataclasses.fields(value)
    }
    return dataclasses.replace(value, **changes)


def request_of(row: Row) -> Any:
    cls = load_request_schema(row.module.API_KEY, row.version)
    return _retarget(build_entity(cls, row.full), row.fields)


def error_codes(value: Any) -> Iterator[ErrorCode]:
    """Every error code anywhere in a response."""
    if isinstance(value, tuple):
        for v in value:
            yield from error_codes(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if isinstance(item, ErrorCode):
                yield item
            else:
                yield from error_codes(item)


@asynccontextmanager
async def secured() -> AsyncIterator[Broker]:
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(node_id=1, authorizer_class_name="acl", super_users="User:admin",
                          group_initial_rebalance_delay_ms=0)
    broker = Broker(config, store, cast(LedgerClient, MemoryLedgerClient()))
    await broker.start()
    await broker.topics.create(T, 2, 1, {})
    try:
        yield broker
    finally:
        await broker.stop()
        await store.close()


async def grant(broker: Broker, needs: tuple[Need, ...], principal: KafkaPrincipal = ALICE) -> None:
    for rtype, name, op in needs:
        await broker.acls.create(
            AclBinding.checked(rtype, name, PatternType.LITERAL, str(principal), "*", op, AclPermission.ALLOW)
        )


async def answer(broker: Broker, row: Row, principal: KafkaPrincipal) -> set[ErrorCode]:
    ctx = RequestContext(broker, row.module.API_KEY, row.version, 1, "matrix", "127.0.0.1:5000", principal=principal)
    async with asyncio.timeout(ANSWER_TIMEOUT_S):
        response = await row.module.handle(ctx, request_of(row))
    return set(error_codes(response))


def case_ids(rows: tuple[Row, ...]) -> list[str]:
    return [f"{r.id}-{'-'.join(n[2].name for n in r.needs)}" for r in rows]


@pytest.mark.parametrize("row", MATRIX, ids=case_ids(MATRIX))
async def test_granted_every_needed_acl_no_authorization_error(row: Row) -> None:
    async with secured() as broker:
        await grant(broker, row.needs + row.extra)
        assert not (await answer(broker, row, ALICE)) & AUTH_ERRORS


@pytest.mark.parametrize("row", MATRIX, ids=case_ids(MATRIX))
async def test_without_one_needed_acl_that_resource_is_refused(row: Row) -> None:
    for missing in row.needs:
        async with secured() as broker:
            await grant(broker, tuple(n for n in row.needs if n != missing) + row.extra)
            codes = await answer(broker, row, ALICE)
            assert DENIED[missing[0]] in codes, (missing, codes)


@pytest.mark.parametrize("row", MATRIX[:6], ids=case_ids(MATRIX[:6]))
async def test_super_user_needs_no_acl(row: Row) -> None:
    async with secured() as broker:
        assert not (await answer(broker, row, ADMIN)) & AUTH_ERRORS


async def test_acls_written_through_one_broker_are_enforced_by_another() -> None:
    """Two brokers over one store (a cluster's shape): the second follows the first's writes by its watch."""
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(authorizer_class_name="acl")
    brokers = [Broker(BrokerConfig(**{**dataclasses.asdict(config), "node_id": n}), store,
                      cast(LedgerClient, MemoryLedgerClient())) for n in (1, 2)]
    for b in brokers:
        await b.start()
    try:
        other = brokers[1]

        def allowed() -> bool:
            return other.authorizer.authorize(ALICE, "127.0.0.1", Op.READ, TOPIC, "orders")

        assert not allowed()
        await grant(brokers[0], ((TOPIC, "orders", Op.READ),))
        await _until(allowed)
        assert len(await brokers[0].acls.delete(AclFilter())) == 1
        await _until(lambda: not allowed())
    finally:
        for b in brokers:
            await b.stop()
        await store.close()


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):  # hang guard
        while not check():
            await asyncio.sleep(0.01)


async def _metadata(broker: Broker, names: list[str] | None) -> Any:
    """A Metadata v10 answer for ALICE (topics and cluster authorized operations asked for), decoded by kio."""
    from kio.index import load_payload_module
    from kio.serial import entity_reader
    from kio.static.constants import EntityType

    from brokers.handlers import metadata

    req = load_payload_module(3, 10, EntityType.request)
    request = req.MetadataRequest(
        topics=None if names is None else tuple(req.MetadataRequestTopic(topic_id=None, name=n) for n in names),
        allow_auto_topic_creation=False, include_cluster_authorized_operations=True,
        include_topic_authorized_operations=True,
    )
    ctx = RequestContext(broker, 3, 10, 1, "matrix", "127.0.0.1:5000", principal=ALICE)
    body = await metadata.handle(ctx, request)
    response_cls = load_payload_module(3, 10, EntityType.response).MetadataResponse
    decoded, _ = entity_reader(response_cls)(body, 0)
    return decoded


async def test_metadata_shows_only_describable_topics_with_their_operations() -> None:
    async with secured() as broker:
        await broker.topics.create("hidden", 1, 1, {})
        await grant(broker, ((TOPIC, T, Op.READ), (CLUSTER, CLUSTER_NAME, Op.CREATE)))
        listing = await _metadata(broker, None)
        assert [t.name for t in listing.topics] == [T]
        assert listing.topics[0].topic_authorized_operations == (1 << Op.READ) | (1 << Op.DESCRIBE)
        assert listing.cluster_authorized_operations == 1 << Op.CREATE
        asked = await _metadata(broker, [T, "hidden"])
        assert [(t.name, t.error_code) for t in asked.topics] == [
            (T, ErrorCode.none), ("hidden", ErrorCode.topic_authorization_failed)]
        assert asked.topics[1].partitions == ()
