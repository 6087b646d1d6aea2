"""Deciding whether a principal may do an operation on a resource, from the ACLs (Kafka's StandardAuthorizer).

Rules, in order: a super user may do anything; a resource no ACL names at all (any principal, any operation)
is open to everyone only when ``allow.everyone.if.no.acl.found`` is true; a DENY that applies wins over any
ALLOW; else an ALLOW that applies, where ALLOW of READ, WRITE, DELETE or ALTER also allows DESCRIBE and ALLOW of
ALTER_CONFIGS also allows DESCRIBE_CONFIGS; else no. An ACL applies to a resource when its pattern is the
literal name, the literal ``*``, or a prefix (PREFIXED) of the name; to a principal when it names it or
``User:*``; to a host when it names it or ``*``; to an operation when it names it or ALL.

When no authorizer is configured (``authorizer.class.name`` empty, the default) every request is allowed.
"""

from __future__ import annotations

from typing import Protocol

from brokers.security.acl import OPERATIONS_OF, AclIndex, AclOperation, AclPermission, ResourceType
from brokers.security.principal import KafkaPrincipal

INT32_MIN = -(2**31)
"""The authorized-operations value of a response whose request did not ask for it."""


class AclSource(Protocol):
    """Where the authorizer reads ACLs (brokers/security/acl_store.py keeps an AclIndex current from metadata)."""

    @property
    def index(self) -> AclIndex: ...


class Authorizer(Protocol):
    enabled: bool

    def authorize(
        self, principal: KafkaPrincipal, host: str, operation: AclOperation, resource_type: ResourceType, name: str
    ) -> bool: ...

    def authorize_any(
        self, principal: KafkaPrincipal, host: str, operation: AclOperation, resource_type: ResourceType
    ) -> bool: ...


class AllowAll:
    """No authorizer configured: everything is allowed (as a Kafka broker without ``authorizer.class.name``)."""

    enabled = False

    def authorize(
        self, principal: KafkaPrincipal, host: str, operation: AclOperation, resource_type: ResourceType, name: str
    ) -> bool:
        return True

    def authorize_any(
        self, principal: KafkaPrincipal, host: str, operation: AclOperation, resource_type: ResourceType
    ) -> bool:
        return True


class AclAuthorizer:
    """The ACL rules of the module docstring over the ACLs an AclSource holds."""

    enabled = True

    def __init__(self, source: AclSource, super_users: frozenset[str], allow_if_no_acl: bool) -> None:
        self._source = source
        self.super_users = super_users
        """Principals as text (``User:admin``)."""
        self.allow_if_no_acl = allow_if_no_acl

    def authorize(
        self, principal: KafkaPrincipal, host: str, operation: AclOperation, resource_type: ResourceType, name: str
    ) -> bool:
        if str(principal) in self.super_users:
            return True
        matching = self._source.index.matching(resource_type, name)
        if not matching:
            return self.allow_if_no_acl
        allowed = False
        for binding in matching:
            entry = binding.entry
            if not entry.applies(principal, host, operation):
                continue
            if entry.permission == AclPermission.DENY:
                return False
            allowed = True
        return allowed

    def authorize_any(
        self, principal: KafkaPrincipal, host: str, operation: AclOperation, resource_type: ResourceType
    ) -> bool:
        """May ``principal`` do ``operation`` on at least one resource of the type (Kafka's
        authorizeByResourceType, simplified: an ALLOW that applies and that no DENY on the same pattern cancels,
        or no ACL of the type at all with ``allow.everyone.if.no.acl.found``)?"""
        if str(principal) in self.super_users:
            return True
        bindings = self._source.index.of_type(resource_type)
        if not bindings:
            return self.allow_if_no_acl
        denied = {
            b.pattern for b in bindings
            if b.entry.permission == AclPermission.DENY and b.entry.applies(principal, host, operation)
        }
        return any(
            b.entry.permission == AclPermission.ALLOW and b.pattern not in denied
            and b.entry.applies(principal, host, operation)
            for b in bindings
        )


def authorized_operations(
    authorizer: Authorizer, principal: KafkaPrincipal, host: str, resource_type: ResourceType, name: str
) -> int:
    """The bitfield of operations (bit = Kafka's operation code) ``principal`` may do on the resource."""
    bits = 0
    for op in OPERATIONS_OF[resource_type]:
        if authorizer.authorize(principal, host, op, resource_type, name):
            bits |= 1 << int(op)
    return bits


def host_of(peer: str) -> str:
    """The host of a ``host:port`` peer string (IPv6 brackets removed), as ACL hosts name it."""
    host, sep, _port = peer.rpartition(":")
    return (host if sep else peer).strip("[]")
