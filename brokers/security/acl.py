"""The ACL model, as Kafka's wire protocol and AdminClient spell it: resource patterns, entries, bindings, filters.

The integer codes are Kafka's (org.apache.kafka.common.resource.ResourceType, PatternType,
acl.AclOperation, acl.AclPermissionType); they travel as int8 in CreateAcls, DescribeAcls and DeleteAcls.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from brokers.security.principal import KafkaPrincipal

WILDCARD = "*"
"""The literal resource name, principal name and host that match every resource, principal and host."""
CLUSTER_NAME = "kafka-cluster"
"""The only name the CLUSTER resource has."""


class ResourceType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class AclOperation(IntEnum):
    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class AclPermission(IntEnum):
    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


CONCRETE_RESOURCES = frozenset(set(ResourceType) - {ResourceType.UNKNOWN, ResourceType.ANY})
CONCRETE_OPERATIONS = frozenset(set(AclOperation) - {AclOperation.UNKNOWN, AclOperation.ANY})
CONCRETE_PERMISSIONS = frozenset({AclPermission.ALLOW, AclPermission.DENY})

IMPLIED_BY: dict[AclOperation, frozenset[AclOperation]] = {
    # An ALLOW of any of these also allows the key (Kafka's AclAuthorizer / StandardAuthorizer).
    AclOperation.DESCRIBE: frozenset(
        {AclOperation.READ, AclOperation.WRITE, AclOperation.DELETE, AclOperation.ALTER, AclOperation.DESCRIBE}
    ),
    AclOperation.DESCRIBE_CONFIGS: frozenset({AclOperation.ALTER_CONFIGS, AclOperation.DESCRIBE_CONFIGS}),
}

OPERATIONS_OF: dict[ResourceType, tuple[AclOperation, ...]] = {
    # The operations that apply to each resource type (what authorized-operations bitfields may contain).
    ResourceType.TOPIC: (
        AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DESCRIBE, AclOperation.DELETE,
        AclOperation.ALTER, AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS,
    ),
    ResourceType.GROUP: (
        AclOperation.READ, AclOperation.DESCRIBE, AclOperation.DELETE, AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS,
    ),
    ResourceType.CLUSTER: (
        AclOperation.CREATE, AclOperation.CLUSTER_ACTION, AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS,
        AclOperation.IDEMPOTENT_WRITE, AclOperation.ALTER, AclOperation.DESCRIBE,
    ),
    ResourceType.TRANSACTIONAL_ID: (AclOperation.DESCRIBE, AclOperation.WRITE),
    ResourceType.DELEGATION_TOKEN: (AclOperation.DESCRIBE,),
    ResourceType.USER: (AclOperation.CREATE_TOKENS, AclOperation.DESCRIBE_TOKENS),
}  # fmt: skip


class AclError(ValueError):
    """An ACL or filter that is not valid (CreateAcls / DeleteAcls / DescribeAcls answer INVALID_REQUEST)."""


def _enum(cls: type[IntEnum], value: int, what: str) -> IntEnum:
    try:
        return cls(value)
    except ValueError:
        raise AclError(f"unknown {what} {value}") from None


@dataclass(frozen=True, slots=True, order=True)
class ResourcePattern:
    """A resource type, a name and how the name matches (LITERAL, or PREFIXED: every name starting with it)."""

    resource_type: ResourceType
    name: str
    pattern_type: PatternType

    def matches(self, resource_type: ResourceType, name: str) -> bool:
        """Does this pattern cover the concrete resource ``resource_type``/``name``?"""
        if resource_type != self.resource_type:
            return False
        if self.pattern_type == PatternType.PREFIXED:
            return name.startswith(self.name)
        return self.name in (name, WILDCARD)


@dataclass(frozen=True, slots=True, order=True)
class AccessEntry:
    """Who (principal, host) may or may not (permission) do what (operation)."""

    principal: str
    host: str
    operation: AclOperation
    permission: AclPermission

    def applies(self, principal: KafkaPrincipal, host: str, operation: AclOperation) -> bool:
        """Does this entry speak about ``principal`` from ``host`` doing ``operation`` (ALLOW with implied ops)?"""
        if self.principal not in (str(principal), f"{principal.principal_type}:{WILDCARD}"):
            return False
        if self.host not in (host, WILDCARD):
            return False
        if self.operation in (operation, AclOperation.ALL):
            return True
        return self.permission == AclPermission.ALLOW and self.operation in IMPLIED_BY.get(operation, ())


@dataclass(frozen=True, slots=True, order=True)
class AclBinding:
    """One ACL: a resource pattern and an access entry."""

    pattern: ResourcePattern
    entry: AccessEntry

    @classmethod
    def checked(
        cls, resource_type: int, name: str, pattern_type: int, principal: str, host: str, operation: int,
        permission: int,
    ) -> AclBinding:
        """Build a binding from wire values, refusing what Kafka refuses to create (AclError)."""
        rtype = _enum(ResourceType, resource_type, "resource type")
        ptype = _enum(PatternType, pattern_type, "pattern type")
        op = _enum(AclOperation, operation, "operation")
        perm = _enum(AclPermission, permission, "permission type")
        if rtype not in CONCRETE_RESOURCES:
            raise AclError(f"Invalid resource type {rtype.name} for an ACL")
        if ptype not in (PatternType.LITERAL, PatternType.PREFIXED):
            raise AclError(f"Invalid pattern type {ptype.name} for an ACL (want LITERAL or PREFIXED)")
        if op not in CONCRETE_OPERATIONS:
            raise AclError(f"Invalid operation {op.name} for an ACL")
        if perm not in CONCRETE_PERMISSIONS:
            raise AclError(f"Invalid permission type {perm.name} for an ACL")
        if not name:
            raise AclError("Resource name should not be empty")
        if rtype == ResourceType.CLUSTER and (name != CLUSTER_NAME or ptype != PatternType.LITERAL):
            raise AclError(f"The only valid name for the CLUSTER resource is {CLUSTER_NAME} (LITERAL)")
        try:
            KafkaPrincipal.parse(principal)
        except ValueError as e:
            raise AclError(str(e)) from None
        if not host:
            raise AclError("Host should not be empty (use * for any host)")
        return cls(
            ResourcePattern(ResourceType(rtype), name, PatternType(ptype)),
            AccessEntry(principal, host, AclOperation(op), AclPermission(perm)),
        )


@dataclass(frozen=True, slots=True)
class AclFilter:
    """What DescribeAcls and DeleteAcls select: ANY / None fields match everything (Kafka's AclBindingFilter)."""

    resource_type: ResourceType = ResourceType.ANY
    name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: AclOperation = AclOperation.ANY
    permission: AclPermission = AclPermission.ANY

    @classmethod
    def checked(
        cls, resource_type: int, name: str | None, pattern_type: int, principal: str | None, host: str | None,
        operation: int, permission: int,
    ) -> AclFilter:
        """Build a filter from wire values; UNKNOWN (or an unknown code) anywhere is an AclError."""
        values = (
            _enum(ResourceType, resource_type, "resource type"),
            _enum(PatternType, pattern_type, "pattern type"),
            _enum(AclOperation, operation, "operation"),
            _enum(AclPermission, permission, "permission type"),
        )
        if any(v == 0 for v in values):
            raise AclError("a filter may not hold UNKNOWN values")
        rtype, ptype, op, perm = values
        return cls(
            ResourceType(rtype), name, PatternType(ptype), principal, host, AclOperation(op), AclPermission(perm)
        )

    def matches_pattern(self, pattern: ResourcePattern) -> bool:
        """Kafka's ResourcePatternFilter.matches."""
        if self.resource_type not in (ResourceType.ANY, pattern.resource_type):
            return False
        if self.pattern_type not in (PatternType.ANY, PatternType.MATCH, pattern.pattern_type):
            return False
        if self.name is None:
            return True
        if self.pattern_type in (PatternType.ANY, pattern.pattern_type):
            return self.name == pattern.name
        if pattern.pattern_type == PatternType.LITERAL:  # MATCH
            return pattern.name in (self.name, WILDCARD)
        return self.name.startswith(pattern.name)

    def matches(self, binding: AclBinding) -> bool:
        entry = binding.entry
        return (
            self.matches_pattern(binding.pattern)
            and self.principal in (None, entry.principal)
            and self.host in (None, entry.host)
            and self.operation in (AclOperation.ANY, entry.operation)
            and self.permission in (AclPermission.ANY, entry.permission)
        )


class AclIndex:
    """ACLs indexed for authorization: per resource type, literal ones by name and prefixed ones by prefix, so
    finding the ACLs that apply to a resource costs a few lookups per character of its name, not a scan."""

    def __init__(self, bindings: Iterable[AclBinding]) -> None:
        self._literal: dict[tuple[ResourceType, str], list[AclBinding]] = {}
        self._prefixed: dict[tuple[ResourceType, str], list[AclBinding]] = {}
        self._by_type: dict[ResourceType, list[AclBinding]] = {}
        self._prefix_lengths: dict[ResourceType, set[int]] = {}
        for b in bindings:
            p = b.pattern
            table = self._prefixed if p.pattern_type == PatternType.PREFIXED else self._literal
            table.setdefault((p.resource_type, p.name), []).append(b)
            self._by_type.setdefault(p.resource_type, []).append(b)
            if p.pattern_type == PatternType.PREFIXED:
                self._prefix_lengths.setdefault(p.resource_type, set()).add(len(p.name))

    def of_type(self, resource_type: ResourceType) -> Sequence[AclBinding]:
        return self._by_type.get(resource_type, ())

    def matching(self, resource_type: ResourceType, name: str) -> list[AclBinding]:
        """Every ACL whose pattern covers the resource (its literal name, the literal ``*``, a prefix of it)."""
        out = list(self._literal.get((resource_type, name), ()))
        if name != WILDCARD:
            out += self._literal.get((resource_type, WILDCARD), ())
        for n in self._prefix_lengths.get(resource_type, ()):
            if n <= len(name):
                out += self._prefixed.get((resource_type, name[:n]), ())
        return out
