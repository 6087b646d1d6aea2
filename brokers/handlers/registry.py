"""The handler table: one module per Kafka API, dispatched by API key. ApiVersions is derived from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from brokers.handlers import (
    api_versions,
    create_partitions,
    create_topics,
    delete_topics,
    describe_cluster,
    describe_configs,
    fetch,
    init_producer_id,
    list_offsets,
    metadata,
    produce,
)
from brokers.handlers.base import RequestContext

Handle = Callable[[RequestContext, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    api_key: int
    min_version: int
    max_version: int
    handle: Handle


MODULES: tuple[ModuleType, ...] = (
    api_versions,
    create_partitions,
    create_topics,
    delete_topics,
    describe_cluster,
    describe_configs,
    fetch,
    init_producer_id,
    list_offsets,
    metadata,
    produce,
)

HANDLERS: dict[int, HandlerSpec] = {
    m.API_KEY: HandlerSpec(m.API_KEY, m.MIN_VERSION, m.MAX_VERSION, m.handle) for m in MODULES
}
