"""DescribeUserScramCredentials (50, KIP-554): each user's SCRAM mechanisms and iteration counts (never salts
or keys). No users (null or empty): every user with a credential."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.credentials import CredentialStore
from brokers.security.scram import MECHANISM_IDS

API_KEY = 50
MIN_VERSION = 0
MAX_VERSION = 0


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    stored = await CredentialStore(ctx.broker.store, ctx.broker.keys).all()
    asked = [u.name for u in request.users or ()]
    counts = Counter(asked)
    results = []
    seen: set[str] = set()
    for user in asked or sorted(stored):
        if user in seen:
            continue
        seen.add(user)
        code, message, infos = ErrorCode.none, None, ()
        if counts[user] > 1:
            code = ErrorCode.duplicate_resource
            message = f"Cannot describe SCRAM credentials for the same user twice in a single request: {user}"
        elif user not in stored:
            code = ErrorCode.resource_not_found
            message = f"Attempt to describe a user credential that does not exist: {user}"
        else:
            infos = tuple(
                make(mod.CredentialInfo, mechanism=MECHANISM_IDS[m], iterations=c.iterations)
                for m, c in sorted(stored[user].items()) if m in MECHANISM_IDS
            )
        results.append(make(mod.DescribeUserScramCredentialsResult, user=user, error_code=code,
                            error_message=message, credential_infos=infos))
    return make(mod.DescribeUserScramCredentialsResponse, throttle_time=NO_THROTTLE, error_code=ErrorCode.none,
                error_message=None, results=tuple(results))
