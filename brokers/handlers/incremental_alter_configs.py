"""IncrementalAlterConfigs (API 44): set, delete, append to or subtract from a topic's or a broker's configs.

What kafka-configs.sh --alter, ``tidelog topics alter --config`` and ``tidelog configs alter`` send. A topic's new
set of configs is checked as CreateTopics checks them (INVALID_CONFIG naming the config) and written to the
topic record in one compare-and-swap; a broker resource ("N" for one broker, "" for the cluster-wide default)
takes only the dynamic broker configs (brokers/dynamic_config.py). Every broker follows both through its
watches and reads configs at use, so the change applies without a restart (handlers/config_alter.py).
"""

from __future__ import annotations

from typing import Any

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.handlers.config_alter import alter_all, incremental

API_KEY = 44
MIN_VERSION = 0
MAX_VERSION = 1


async def handle(ctx: RequestContext, request: Any) -> Any:
    """Alter each resource; errors are per resource, and a resource named twice is refused."""
    mod = response_module(API_KEY, ctx.api_version)
    results = await alter_all(ctx, request.resources, lambda r: incremental(r.configs), bool(request.validate_only))
    return make(
        mod.IncrementalAlterConfigsResponse,
        throttle_time=NO_THROTTLE,
        responses=tuple(
            make(
                mod.AlterConfigsResourceResponse, error_code=code, error_message=message,
                resource_type=resource.resource_type, resource_name=resource.resource_name,
            )
            for resource, code, message in results
        ),
    )
