"""InitProducerId (22): producer ids for idempotent producers (transactions come later)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module

API_KEY = 22
MIN_VERSION = 0
MAX_VERSION = 5


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    if request.transactional_id is not None:
        # No transaction coordinator yet: say so with the retriable error Kafka uses for it.
        return make(
            mod.InitProducerIdResponse,
            throttle_time=NO_THROTTLE,
            error_code=ErrorCode.coordinator_not_available,
            producer_id=-1,
            producer_epoch=-1,
        )
    # Like Kafka, a producer without a transactional id always gets a fresh id at epoch 0.
    pid = await ctx.broker.allocate_producer_id()
    return make(
        mod.InitProducerIdResponse,
        throttle_time=NO_THROTTLE,
        error_code=ErrorCode.none,
        producer_id=pid,
        producer_epoch=0,
    )
