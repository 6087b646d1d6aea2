"""EndTxn (26): commit or abort. Answered once PrepareCommit/PrepareAbort is durable on ``__transaction_state``;
the coordinator then writes the markers to every partition of the transaction in the background. v5 (KIP-890
part 2) bumps the producer's epoch with the transaction's end and answers the new one."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 26
MIN_VERSION = 0
MAX_VERSION = 5
FENCED_SINCE = 2
EPOCH_BUMP_SINCE = 5


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    if not ctx.allowed(AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, request.transactional_id):
        return make(mod.EndTxnResponse, throttle_time=NO_THROTTLE,
                    error_code=ErrorCode.transactional_id_authorization_failed, producer_id=-1, producer_epoch=-1)
    result = await ctx.broker.transactions.end_txn(
        request.transactional_id, int(request.producer_id), int(request.producer_epoch), bool(request.committed),
        bump_epoch=ctx.api_version >= EPOCH_BUMP_SINCE,
    )
    code = result.error
    if code == ErrorCode.producer_fenced and ctx.api_version < FENCED_SINCE:
        code = ErrorCode.invalid_producer_epoch
    return make(mod.EndTxnResponse, throttle_time=NO_THROTTLE, error_code=code, producer_id=result.producer_id,
                producer_epoch=result.producer_epoch)
