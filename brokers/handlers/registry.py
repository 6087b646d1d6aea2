"""The handler table: one module per Kafka API, dispatched by API key. ApiVersions is derived from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import Any

from brokers.handlers.base import RequestContext

Handle = Callable[[RequestContext, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """One API: the versions it handles, and the lowest it advertises (which may be lower, see below)."""

    api_key: int
    min_version: int
    max_version: int
    handle: Handle
    advertised_min_version: int


# One module per API, named after it; adding an API is adding its name here.
API_MODULES = (
    "add_offsets_to_txn",
    "add_partitions_to_txn",
    "alter_configs",
    "alter_partition_reassignments",
    "alter_replica_log_dirs",
    "alter_user_scram_credentials",
    "api_versions",
    "consumer_group_describe",
    "consumer_group_heartbeat",
    "create_acls",
    "create_partitions",
    "create_topics",
    "delete_acls",
    "delete_groups",
    "delete_records",
    "delete_topics",
    "describe_acls",
    "describe_cluster",
    "describe_configs",
    "describe_groups",
    "describe_log_dirs",
    "describe_producers",
    "describe_topic_partitions",
    "describe_transactions",
    "describe_user_scram_credentials",
    "elect_leaders",
    "end_txn",
    "fetch",
    "find_coordinator",
    "heartbeat",
    "incremental_alter_configs",
    "init_producer_id",
    "join_group",
    "leave_group",
    "list_groups",
    "list_offsets",
    "list_partition_reassignments",
    "list_transactions",
    "metadata",
    "offset_commit",
    "offset_delete",
    "offset_fetch",
    "offset_for_leader_epoch",
    "produce",
    "sasl_authenticate",
    "sasl_handshake",
    "sync_group",
    "write_txn_markers",
    "txn_offset_commit",
)
MODULES: tuple[ModuleType, ...] = tuple(import_module(f"brokers.handlers.{name}") for name in API_MODULES)

# A module may advertise versions it does not handle (ADVERTISED_MIN_VERSION): Kafka 4 lists Produce from
# v0 because librdkafka <= 2.11 only enables gzip/snappy/lz4 when it sees Produce v0 (KAFKA-18659).
HANDLERS: dict[int, HandlerSpec] = {
    m.API_KEY: HandlerSpec(
        m.API_KEY, m.MIN_VERSION, m.MAX_VERSION, m.handle, getattr(m, "ADVERTISED_MIN_VERSION", m.MIN_VERSION)
    )
    for m in MODULES
}
