"""CreateAcls (API 30): store ACL bindings; needs ALTER on the cluster. Refused without an authorizer."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import CLUSTER_NAME, AclBinding, AclError, AclOperation, PatternType, ResourceType
from metadata.api import MetadataError

API_KEY = 30
MIN_VERSION = 1
MAX_VERSION = 3
NO_AUTHORIZER = "No Authorizer is configured."


async def _create(ctx: RequestContext, creation: Any) -> tuple[ErrorCode, str | None]:
    pattern = creation.resource_pattern_type if ctx.api_version >= 1 else PatternType.LITERAL
    try:
        binding = AclBinding.checked(
            creation.resource_type, creation.resource_name, pattern, creation.principal, creation.host,
            creation.operation, creation.permission_type,
        )
    except AclError as e:
        return ErrorCode.invalid_request, str(e)
    try:
        await ctx.broker.acls.create(binding)
    except MetadataError as e:
        return ErrorCode.unknown_server_error, f"metadata store: {e}"
    return ErrorCode.none, None


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    results = []
    message: str | None
    for creation in request.creations:
        if not ctx.broker.authorizer.enabled:
            code, message = ErrorCode.security_disabled, NO_AUTHORIZER
        elif not ctx.allowed(AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
            code, message = ErrorCode.cluster_authorization_failed, "Cluster authorization failed."
        else:
            code, message = await _create(ctx, creation)
        results.append(make(mod.AclCreationResult, error_code=code, error_message=message))
    return make(mod.CreateAclsResponse, throttle_time=NO_THROTTLE, results=tuple(results))
