"""DescribeCluster (API 60): cluster id, the live brokers and the controller, as ``broker.routing`` knows them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.routing import Endpoint
from brokers.security.acl import CLUSTER_NAME, ResourceType

API_KEY = 60
MIN_VERSION = 0
MAX_VERSION = 2

ENDPOINT_BROKERS = 1


async def handle(ctx: RequestContext, request: Any) -> Any:
    """Describe the cluster; only the BROKERS endpoint type is served (as by a Kafka broker)."""
    mod = response_module(API_KEY, ctx.api_version)
    endpoint_type = int(getattr(request, "endpoint_type", ENDPOINT_BROKERS))
    code, message = ErrorCode.none, None
    brokers: Sequence[Endpoint] = ()
    if endpoint_type != ENDPOINT_BROKERS:
        code, message = ErrorCode.unsupported_endpoint_type, f"Unsupported endpoint type {endpoint_type}"
    else:
        brokers = ctx.broker.routing.brokers()
    operations = ctx.operations(ResourceType.CLUSTER, CLUSTER_NAME, bool(request.include_cluster_authorized_operations))
    return make(
        mod.DescribeClusterResponse,
        throttle_time=NO_THROTTLE,
        error_code=code,
        error_message=message,
        endpoint_type=endpoint_type,
        cluster_id=ctx.broker.cluster_id,
        controller_id=ctx.broker.routing.controller_id(),
        brokers=tuple(
            make(mod.DescribeClusterBroker, broker_id=b.node_id, host=host, port=port, rack=b.rack,
                 is_fenced=False)
            for b in brokers
            for host, port in (ctx.address(b),)
        ),
        cluster_authorized_operations=operations,
    )
