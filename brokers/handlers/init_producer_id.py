"""InitProducerId (22): producer ids for idempotent producers, and for transactional ones through the transaction
coordinator (brokers/transactions/): the epoch bump that fences older producers of the same transactional id,
the abort of a transaction left open, KIP-360's producer id/epoch in the request (v3+)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.acl import CLUSTER_NAME, AclOperation, ResourceType
from brokers.security.authorizer import host_of

API_KEY = 22
MIN_VERSION = 0
MAX_VERSION = 5
FENCED_SINCE = 4
"""PRODUCER_FENCED is answered from v4 (KIP-588); older clients get INVALID_PRODUCER_EPOCH, as Kafka does."""


def _may_write_idempotently(ctx: RequestContext) -> bool:
    """Kafka (KIP-679): IDEMPOTENT_WRITE on the cluster, or WRITE allowed on some topic."""
    authorizer = ctx.broker.authorizer
    if not authorizer.enabled or ctx.allowed(AclOperation.IDEMPOTENT_WRITE, ResourceType.CLUSTER, CLUSTER_NAME):
        return True
    return authorizer.authorize_any(ctx.principal, host_of(ctx.peer), AclOperation.WRITE, ResourceType.TOPIC)


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    txn_id = request.transactional_id
    if txn_id is not None:
        if not txn_id:
            code, pid, epoch = ErrorCode.invalid_request, -1, -1
        elif not ctx.allowed(AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, txn_id):
            code, pid, epoch = ErrorCode.transactional_id_authorization_failed, -1, -1
        else:
            result = await ctx.broker.transactions.init_producer_id(
                txn_id, int(request.transaction_timeout.total_seconds() * 1000),
                int(getattr(request, "producer_id", -1)), int(getattr(request, "producer_epoch", -1)),
            )
            code, pid, epoch = result.error, result.producer_id, result.producer_epoch
            if code == ErrorCode.producer_fenced and ctx.api_version < FENCED_SINCE:
                code = ErrorCode.invalid_producer_epoch
        return make(mod.InitProducerIdResponse, throttle_time=NO_THROTTLE, error_code=code, producer_id=pid,
                    producer_epoch=epoch)
    if not _may_write_idempotently(ctx):
        return make(mod.InitProducerIdResponse, throttle_time=NO_THROTTLE,
                    error_code=ErrorCode.cluster_authorization_failed, producer_id=-1, producer_epoch=-1)
    # Like Kafka, a producer without a transactional id always gets a fresh id at epoch 0.
    pid = await ctx.broker.allocate_producer_id()
    return make(
        mod.InitProducerIdResponse,
        throttle_time=NO_THROTTLE,
        error_code=ErrorCode.none,
        producer_id=pid,
        producer_epoch=0,
    )
