"""DeleteAcls (API 31): delete the ACLs each filter matches and list them; needs ALTER on the cluster."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode
from kio.static.primitive import i8

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.create_acls import NO_AUTHORIZER
from brokers.security.acl import CLUSTER_NAME, AclError, AclFilter, AclOperation, PatternType, ResourceType
from metadata.api import MetadataError

API_KEY = 31
MIN_VERSION = 1
MAX_VERSION = 3


async def _delete(ctx: RequestContext, mod: Any, wanted: Any) -> Any:
    def result(code: ErrorCode, message: str | None, matching: tuple[Any, ...] = ()) -> Any:
        return make(mod.DeleteAclsFilterResult, error_code=code, error_message=message, matching_acls=matching)

    if not ctx.broker.authorizer.enabled:
        return result(ErrorCode.security_disabled, NO_AUTHORIZER)
    if not ctx.allowed(AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return result(ErrorCode.cluster_authorization_failed, "Cluster authorization failed.")
    pattern = wanted.pattern_type_filter if ctx.api_version >= 1 else PatternType.LITERAL
    try:
        acl_filter = AclFilter.checked(
            wanted.resource_type_filter, wanted.resource_name_filter, pattern, wanted.principal_filter,
            wanted.host_filter, wanted.operation, wanted.permission_type,
        )
        deleted = await ctx.broker.acls.delete(acl_filter)
    except AclError as e:
        return result(ErrorCode.invalid_request, str(e))
    except MetadataError as e:
        return result(ErrorCode.unknown_server_error, f"metadata store: {e}")
    return result(ErrorCode.none, None, tuple(
        make(mod.DeleteAclsMatchingAcl, error_code=ErrorCode.none, error_message=None,
             resource_type=i8(b.pattern.resource_type), resource_name=b.pattern.name,
             pattern_type=i8(b.pattern.pattern_type), principal=b.entry.principal, host=b.entry.host,
             operation=i8(b.entry.operation), permission_type=i8(b.entry.permission))
        for b in deleted
    ))


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    results = tuple([await _delete(ctx, mod, f) for f in request.filters])
    return make(mod.DeleteAclsResponse, throttle_time=NO_THROTTLE, filter_results=results)
