"""SaslHandshake (17): choose the SASL mechanism of the connection (brokers/security/authenticator.py).

v1 only: the exchange then runs in SaslAuthenticate requests. v0's raw SASL tokens outside Kafka framing are
not supported (every maintained client uses v1 against brokers that advertise it)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import RequestContext, make, response_module

API_KEY = 17
MIN_VERSION = 1
MAX_VERSION = 1


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    auth = ctx.auth
    if auth is None:
        return make(mod.SaslHandshakeResponse, error_code=ErrorCode.illegal_sasl_state, mechanisms=())
    code = auth.handshake(str(request.mechanism))
    return make(mod.SaslHandshakeResponse, error_code=code, mechanisms=tuple(auth.mechanisms))
