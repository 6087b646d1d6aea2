"""The ACL model and the authorizer's rules (brokers/security/acl.py, authorizer.py) on in-memory ACLs."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from brokers.security.acl import (
    AclBinding,
    AclError,
    AclFilter,
    AclIndex,
    AclOperation,
    AclPermission,
    PatternType,
    ResourceType,
)
from brokers.security.authorizer import AclAuthorizer, AllowAll, authorized_operations, host_of
from brokers.security.principal import ANONYMOUS, KafkaPrincipal

ALICE = KafkaPrincipal("User", "alice")
BOB = KafkaPrincipal("User", "bob")
T, G, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
R, W, D = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE


class Source:
    def __init__(self, bindings: Iterable[AclBinding] = ()) -> None:
        self.index = AclIndex(bindings)


def acl(
    name: str, op: AclOperation, perm: str = "ALLOW", principal: str = "User:alice", host: str = "*",
    rtype: ResourceType = T, pattern: PatternType = PatternType.LITERAL,
) -> AclBinding:
    return AclBinding.checked(rtype, name, pattern, principal, host, op, AclPermission[perm])


def authz(*bindings: AclBinding, supers: frozenset[str] = frozenset(), allow: bool = False) -> AclAuthorizer:
    return AclAuthorizer(Source(bindings), supers, allow)


def test_literal_allow_only_that_topic_principal_and_operation() -> None:
    a = authz(acl("orders", R))
    assert a.authorize(ALICE, "10.0.0.1", R, T, "orders")
    assert not a.authorize(ALICE, "10.0.0.1", W, T, "orders")
    assert not a.authorize(BOB, "10.0.0.1", R, T, "orders")
    assert not a.authorize(ALICE, "10.0.0.1", R, T, "orders2")
    assert not a.authorize(ALICE, "10.0.0.1", R, G, "orders")


def test_prefixed_and_wildcard_resource_names() -> None:
    a = authz(acl("app-", W, pattern=PatternType.PREFIXED), acl("*", R))
    assert a.authorize(ALICE, "h", W, T, "app-events")
    assert not a.authorize(ALICE, "h", W, T, "other")
    assert a.authorize(ALICE, "h", R, T, "anything")
    assert not a.authorize(ALICE, "h", W, T, "ap")


def test_deny_wins_over_allow_from_any_matching_pattern() -> None:
    a = authz(acl("*", AclOperation.ALL), acl("secret", R, "DENY"))
    assert a.authorize(ALICE, "h", R, T, "public")
    assert not a.authorize(ALICE, "h", R, T, "secret")
    assert a.authorize(ALICE, "h", W, T, "secret")  # the deny is for READ only
    b = authz(acl("x", R), acl("x", AclOperation.ALL, "DENY", principal="User:*"))
    assert not b.authorize(ALICE, "h", R, T, "x")


def test_implied_operations_apply_to_allow_not_deny() -> None:
    for op in (R, W, AclOperation.DELETE, AclOperation.ALTER):
        assert authz(acl("t", op)).authorize(ALICE, "h", D, T, "t"), op
    assert not authz(acl("t", AclOperation.CREATE)).authorize(ALICE, "h", D, T, "t")
    cfg = authz(acl("t", AclOperation.ALTER_CONFIGS))
    assert cfg.authorize(ALICE, "h", AclOperation.DESCRIBE_CONFIGS, T, "t")
    # DENY READ does not deny DESCRIBE
    mixed = authz(acl("t", D), acl("t", R, "DENY"))
    assert mixed.authorize(ALICE, "h", D, T, "t") and not mixed.authorize(ALICE, "h", R, T, "t")


def test_wildcard_principal_and_host_matching() -> None:
    a = authz(acl("t", R, principal="User:*", host="10.0.0.1"))
    assert a.authorize(BOB, "10.0.0.1", R, T, "t")
    assert not a.authorize(BOB, "10.0.0.2", R, T, "t")
    assert a.authorize(ANONYMOUS, "10.0.0.1", R, T, "t")


def test_super_users_bypass_deny() -> None:
    a = authz(acl("t", AclOperation.ALL, "DENY", principal="User:*"), supers=frozenset({"User:admin"}))
    assert a.authorize(KafkaPrincipal("User", "admin"), "h", AclOperation.DELETE, T, "t")
    assert not a.authorize(ALICE, "h", AclOperation.DELETE, T, "t")


def test_allow_everyone_if_no_acl_found_only_for_resources_without_any_acl() -> None:
    open_ = authz(acl("t", R, principal="User:bob"), allow=True)
    assert open_.authorize(ALICE, "h", W, T, "other")  # nothing names "other"
    assert not open_.authorize(ALICE, "h", R, T, "t")  # "t" has an ACL (for bob): alice needs her own
    closed = authz(allow=False)
    assert not closed.authorize(ALICE, "h", R, T, "t")
    assert AllowAll().authorize(ALICE, "h", R, T, "t")


def test_authorized_operations_bitfield() -> None:
    a = authz(acl("t", R), acl("t", AclOperation.ALTER_CONFIGS))
    bits = authorized_operations(a, ALICE, "h", T, "t")
    want = {R, D, AclOperation.ALTER_CONFIGS, AclOperation.DESCRIBE_CONFIGS}
    assert bits == sum(1 << int(op) for op in want)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((T, "t", PatternType.MATCH, "User:a", "*", R, AclPermission.ALLOW), "pattern type"),
        ((T, "t", PatternType.LITERAL, "User:a", "*", AclOperation.ANY, AclPermission.ALLOW), "operation"),
        ((T, "t", PatternType.LITERAL, "User:a", "*", R, AclPermission.ANY), "permission"),
        ((ResourceType.ANY, "t", PatternType.LITERAL, "User:a", "*", R, AclPermission.ALLOW), "resource type"),
        ((T, "", PatternType.LITERAL, "User:a", "*", R, AclPermission.ALLOW), "empty"),
        ((T, "t", PatternType.LITERAL, "alice", "*", R, AclPermission.ALLOW), "principal"),
        ((C, "other", PatternType.LITERAL, "User:a", "*", R, AclPermission.ALLOW), "kafka-cluster"),
        ((99, "t", PatternType.LITERAL, "User:a", "*", R, AclPermission.ALLOW), "unknown resource type"),
    ],
)
def test_invalid_bindings_are_refused(args: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(AclError, match=message):
        AclBinding.checked(*args)


def test_filters_any_match_literal_prefixed() -> None:
    lit, pre, star = acl("app-orders", R), acl("app-", R, pattern=PatternType.PREFIXED), acl("*", R)
    match = AclFilter(T, "app-orders", PatternType.MATCH)
    assert [b for b in (lit, pre, star) if match.matches(b)] == [lit, pre, star]
    any_ = AclFilter(T, "app-", PatternType.ANY)
    assert [b for b in (lit, pre, star) if any_.matches(b)] == [pre]
    assert not AclFilter(T, "app-orders", PatternType.PREFIXED).matches(lit)
    assert AclFilter(principal="User:alice", operation=R).matches(lit)
    assert not AclFilter(principal="User:bob").matches(lit)
    assert not AclFilter(G).matches(lit)
    with pytest.raises(AclError):
        AclFilter.checked(0, None, 1, None, None, 1, 1)


def test_host_of_peer() -> None:
    assert host_of("127.0.0.1:5555") == "127.0.0.1"
    assert host_of("[::1]:5555") == "::1"


def test_index_finds_exactly_the_patterns_that_match() -> None:
    """AclIndex.matching against a scan with ResourcePattern.matches, over literal, wildcard and prefixed ACLs."""
    bindings = [acl(n, R) for n in ("a", "ab", "abc", "*", "b")]
    bindings += [acl(n, R, pattern=PatternType.PREFIXED) for n in ("a", "ab", "abcd", "b", "*")]
    bindings += [acl("a", R, rtype=G)]
    index = AclIndex(bindings)
    for name in ("a", "ab", "abc", "abcd", "abcde", "b", "ba", "c", "*", ""):
        want = sorted(b for b in bindings if b.pattern.matches(T, name))
        assert sorted(index.matching(T, name)) == want, name
    assert len(index.of_type(G)) == 1
