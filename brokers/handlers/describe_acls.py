"""DescribeAcls (API 29): the ACLs a filter matches, grouped by resource pattern; needs DESCRIBE on the cluster."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode
from kio.static.primitive import i8

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.create_acls import NO_AUTHORIZER
from brokers.security.acl import CLUSTER_NAME, AclBinding, AclError, AclFilter, AclOperation, PatternType, ResourceType

API_KEY = 29
MIN_VERSION = 1
MAX_VERSION = 3


def _grouped(mod: Any, bindings: list[AclBinding]) -> tuple[Any, ...]:
    by_pattern: dict[Any, list[Any]] = {}
    for b in bindings:
        e = b.entry
        by_pattern.setdefault(b.pattern, []).append(
            make(mod.AclDescription, principal=e.principal, host=e.host, operation=i8(e.operation),
                 permission_type=i8(e.permission))
        )
    return tuple(
        make(mod.DescribeAclsResource, resource_type=i8(p.resource_type), resource_name=p.name,
             pattern_type=i8(p.pattern_type), acls=tuple(acls))
        for p, acls in sorted(by_pattern.items())
    )


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)

    def answer(code: ErrorCode, message: str | None, resources: tuple[Any, ...] = ()) -> Any:
        return make(mod.DescribeAclsResponse, throttle_time=NO_THROTTLE, error_code=code, error_message=message,
                    resources=resources)

    if not ctx.broker.authorizer.enabled:
        return answer(ErrorCode.security_disabled, NO_AUTHORIZER)
    if not ctx.allowed(AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return answer(ErrorCode.cluster_authorization_failed, "Cluster authorization failed.")
    pattern = request.pattern_type_filter if ctx.api_version >= 1 else PatternType.LITERAL
    try:
        acl_filter = AclFilter.checked(
            request.resource_type_filter, request.resource_name_filter, pattern, request.principal_filter,
            request.host_filter, request.operation, request.permission_type,
        )
    except AclError as e:
        return answer(ErrorCode.invalid_request, str(e))
    return answer(ErrorCode.none, None, _grouped(mod, ctx.broker.acls.matching(acl_filter)))
