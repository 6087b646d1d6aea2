"""ListTransactions (66, KIP-664): the transactional ids this broker coordinates, filtered by state and producer
id (v1+: open at least this long; v2+: ids matching a regular expression). Admin clients ask every broker."""

from __future__ import annotations

import re
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import AclOperation, ResourceType

API_KEY = 66
MIN_VERSION = 0
MAX_VERSION = 2


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    try:
        code, unknown, txns = ctx.broker.transactions.list_transactions(
            tuple(request.state_filters), tuple(int(p) for p in request.producer_id_filters),
            int(getattr(request, "duration_filter", -1)), getattr(request, "transactional_id_pattern", None),
        )
    except re.error:
        code, unknown, txns = ErrorCode.invalid_regular_expression, [], []
    return make(
        mod.ListTransactionsResponse, throttle_time=NO_THROTTLE, error_code=code,
        unknown_state_filters=tuple(unknown),
        transaction_states=tuple(
            make(mod.TransactionState, transactional_id=t.transactional_id, producer_id=t.producer_id,
                 transaction_state=t.state)
            for t in txns
            if ctx.allowed(AclOperation.DESCRIBE, ResourceType.TRANSACTIONAL_ID, t.transactional_id)
        ),
    )
