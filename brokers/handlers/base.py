"""What every handler module shares: the request context and version-tolerant response building."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, fields
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from kio.index import load_payload_module
from kio.static.constants import EntityType

from brokers.security.acl import AclOperation, ResourceType
from brokers.security.authorizer import INT32_MIN, authorized_operations, host_of
from brokers.security.principal import ANONYMOUS, KafkaPrincipal

if TYPE_CHECKING:
    from brokers.broker import Broker
    from brokers.routing import Endpoint
    from brokers.security.authenticator import Authenticator
    from brokers.security.listeners import ListenerSpec

T = TypeVar("T")
NO_THROTTLE = datetime.timedelta(0)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request as a handler sees it."""

    broker: Broker
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    peer: str
    after: asyncio.Future[None] | None = None
    """Produce only: resolves once the previous produce on this connection handed its entries over."""
    produced: asyncio.Future[None] | None = None
    """Produce only: to resolve once this request's entries are handed to the logs."""
    principal: KafkaPrincipal = ANONYMOUS
    """Who sent the request (set by the connection's authentication; ACLs and quotas use it)."""
    auth: Authenticator | None = None
    """The connection's authentication state (SaslHandshake / SaslAuthenticate use it)."""
    listener: ListenerSpec | None = None
    """The listener the request came in on (Metadata advertises it); None: the broker's only listener."""

    def address(self, endpoint: Endpoint) -> tuple[str, int]:
        """Where a client of this request's listener reaches a broker: this broker at the listener's advertised
        address, another at its registered listener of the same name (else its first address)."""
        listener = self.listener
        if listener is None:
            return endpoint.host, endpoint.port
        if endpoint.node_id == self.broker.routing.node_id:
            return listener.advertised_host, listener.advertised_port
        return endpoint.on(listener.name)

    def allowed(self, operation: AclOperation, resource_type: ResourceType, name: str) -> bool:
        """May this request's principal do ``operation`` on the resource (always, without an authorizer)?"""
        authorizer = self.broker.authorizer
        if not authorizer.enabled:
            return True
        return authorizer.authorize(self.principal, host_of(self.peer), operation, resource_type, name)

    def operations(self, resource_type: ResourceType, name: str, wanted: bool = True) -> int:
        """The authorized-operations bitfield of a resource (Kafka's INT32_MIN when the request did not ask)."""
        if not wanted:
            return INT32_MIN
        return authorized_operations(self.broker.authorizer, self.principal, host_of(self.peer), resource_type, name)

    async def in_order(self) -> None:
        """Produce only: wait for the previous produce request on this connection to be appended."""
        if self.after is not None and not self.after.done():
            await asyncio.shield(self.after)

    def appended(self) -> None:
        """Produce only: let the next produce request on this connection append."""
        if self.produced is not None and not self.produced.done():
            self.produced.set_result(None)


@cache
def response_module(api_key: int, version: int) -> ModuleType:
    """kio's module of response classes for one API version."""
    return load_payload_module(api_key, version, EntityType.response)


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def make(cls: type[T], **values: Any) -> T:
    """Build a kio entity, dropping fields this version of it does not have."""
    names = _field_names(cls)  # type: ignore[arg-type]  # classes are hashable
    return cls(**{k: v for k, v in values.items() if k in names})


def ms(value: int) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=value)
