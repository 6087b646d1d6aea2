"""SaslAuthenticate (36): one step of the SASL exchange chosen by SaslHandshake (PLAIN, SCRAM-SHA-256/512).

v1+ carries session_lifetime_ms (KIP-368, ``connections.max.reauth.ms``). A failure is answered with
SASL_AUTHENTICATION_FAILED and its message, then the connection is closed (brokers/security/authenticator.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import RequestContext, make, ms, response_module

API_KEY = 36
MIN_VERSION = 0
MAX_VERSION = 2


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    auth = ctx.auth
    if auth is None:
        return make(mod.SaslAuthenticateResponse, error_code=ErrorCode.illegal_sasl_state,
                    error_message="SASL is not enabled on this listener", auth_bytes=b"", session_lifetime=ms(0))
    result = await auth.authenticate(bytes(request.auth_bytes), asyncio.get_running_loop().time())
    return make(mod.SaslAuthenticateResponse, error_code=result.error, error_message=result.message,
                auth_bytes=result.auth_bytes, session_lifetime=ms(result.session_lifetime_ms))
