"""Cost of one ACL decision (brokers/security/authorizer.py) as the number of ACLs grows.

In-process, no broker: an AclAuthorizer over N LITERAL topic ACLs (one per topic, for User:alice), plus N/10
PREFIXED ones and a wildcard DENY for another principal. Every request checks at least one resource, so this
is what an authorizer adds per topic (Produce, Fetch) or per Metadata topic. Prints microseconds per decision,
allowed and denied, for each N, and the machine load.

    .venv/bin/python bench/acl_authorize.py                 # the figures in docs/benchmarks.md
    .venv/bin/python bench/acl_authorize.py --sizes 10,100  # a quick look
"""

from __future__ import annotations

import argparse
import os
import time

from brokers.security.acl import AclBinding, AclIndex, AclOperation, AclPermission, PatternType, ResourceType
from brokers.security.authorizer import AclAuthorizer
from brokers.security.principal import KafkaPrincipal

ALICE = KafkaPrincipal("User", "alice")
TOPIC = ResourceType.TOPIC


class Source:
    def __init__(self, bindings: list[AclBinding]) -> None:
        self.index = AclIndex(bindings)


def acls(n: int) -> list[AclBinding]:
    out = [AclBinding.checked(TOPIC, f"topic-{i}", PatternType.LITERAL, "User:alice", "*", AclOperation.READ,
                              AclPermission.ALLOW) for i in range(n)]
    out += [AclBinding.checked(TOPIC, f"app-{i}-", PatternType.PREFIXED, "User:alice", "*", AclOperation.WRITE,
                               AclPermission.ALLOW) for i in range(max(n // 10, 1))]
    out.append(AclBinding.checked(TOPIC, "*", PatternType.LITERAL, "User:mallory", "*", AclOperation.ALL,
                                  AclPermission.DENY))
    return out


def per_call_us(authorizer: AclAuthorizer, name: str, op: AclOperation, seconds: float) -> tuple[float, bool]:
    calls, result = 0, False
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            result = authorizer.authorize(ALICE, "127.0.0.1", op, TOPIC, name)
        calls += 100
    return elapsed / calls * 1e6, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000", help="numbers of LITERAL ACLs (comma-separated)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()}")
    print(f"{'ACLs':>8}  {'allowed us':>10}  {'denied us':>10}")
    for n in (int(s) for s in args.sizes.split(",")):
        authorizer = AclAuthorizer(Source(acls(n)), frozenset(), allow_if_no_acl=False)
        allowed_us, allowed = per_call_us(authorizer, f"topic-{n // 2}", AclOperation.READ, args.seconds)
        denied_us, denied = per_call_us(authorizer, f"topic-{n // 2}", AclOperation.DELETE, args.seconds)
        assert allowed and not denied
        print(f"{len(acls(n)):>8}  {allowed_us:>10.1f}  {denied_us:>10.1f}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
