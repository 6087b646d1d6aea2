"""AlterConfigs (API 33): replace a topic's, a broker's or the cluster-wide default's configs as a whole.

The older of Kafka's two config-changing APIs (kafka-python's ``alter_configs``, kafkajs's ``alterConfigs``,
confluent-kafka's ``alter_configs``): the configs given become the resource's whole set of dynamic configs,
and any not given go back to their defaults. Checked and stored as IncrementalAlterConfigs does
(handlers/config_alter.py); applied live by every broker.
"""

from __future__ import annotations

from typing import Any

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.config_alter import alter_all, replaced

API_KEY = 33
MIN_VERSION = 0
MAX_VERSION = 2


async def handle(ctx: RequestContext, request: Any) -> Any:
    """Alter each resource; errors are per resource."""
    mod = response_module(API_KEY, ctx.api_version)
    results = await alter_all(ctx, request.resources, lambda r: replaced(r.configs), bool(request.validate_only))
    return make(
        mod.AlterConfigsResponse,
        throttle_time=NO_THROTTLE,
        responses=tuple(
            make(
                mod.AlterConfigsResourceResponse, error_code=code, error_message=message,
                resource_type=resource.resource_type, resource_name=resource.resource_name,
            )
            for resource, code, message in results
        ),
    )
