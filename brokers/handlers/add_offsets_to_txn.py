"""AddOffsetsToTxn (25): the consumer group's ``__consumer_offsets`` partition joins the transaction, so the
offsets the producer then commits with TxnOffsetCommit are committed or dropped with it."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 25
MIN_VERSION = 0
MAX_VERSION = 4
FENCED_SINCE = 2


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    if not ctx.allowed(AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, request.transactional_id):
        code = ErrorCode.transactional_id_authorization_failed
    elif not ctx.allowed(AclOperation.READ, ResourceType.GROUP, request.group_id):
        code = ErrorCode.group_authorization_failed
    else:
        code = await ctx.broker.transactions.add_offsets(
            request.transactional_id, int(request.producer_id), int(request.producer_epoch), request.group_id
        )
    if code == ErrorCode.producer_fenced and ctx.api_version < FENCED_SINCE:
        code = ErrorCode.invalid_producer_epoch
    return make(mod.AddOffsetsToTxnResponse, throttle_time=NO_THROTTLE, error_code=code)
