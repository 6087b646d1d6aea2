"""AlterUserScramCredentials (51, KIP-554): add, replace or delete users' SCRAM credentials.

The client sends the salted password (Hi(password, salt, iterations)); the broker keeps salt, iterations,
StoredKey and ServerKey (brokers/security/scram.py). One result per user: if any of a user's alterations is
invalid, none of them is applied. Errors as Kafka's: UNSUPPORTED_SASL_MECHANISM, UNACCEPTABLE_CREDENTIAL (empty
user name, salt or password; iterations outside 4096..16384), DUPLICATE_RESOURCE (a user and mechanism altered
twice), RESOURCE_NOT_FOUND (deleting a credential that does not exist)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kio.schema.errors import ErrorCode

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module
from brokers.security.credentials import CredentialStore
from brokers.security.scram import MAX_ITERATIONS, MECHANISM_NAMES, MIN_ITERATIONS, credential_from_salted

API_KEY = 51
MIN_VERSION = 0
MAX_VERSION = 0


def _check(alteration: Any, upsert: bool) -> tuple[ErrorCode, str] | None:
    if not alteration.name:
        return ErrorCode.unacceptable_credential, "Username must not be empty"
    if int(alteration.mechanism) not in MECHANISM_NAMES:
        return ErrorCode.unsupported_sasl_mechanism, "Unknown SCRAM mechanism"
    if upsert:
        if alteration.iterations < MIN_ITERATIONS:
            return ErrorCode.unacceptable_credential, f"Too few iterations (minimum {MIN_ITERATIONS})"
        if alteration.iterations > MAX_ITERATIONS:
            return ErrorCode.unacceptable_credential, f"Too many iterations (maximum {MAX_ITERATIONS})"
        if not alteration.salt or not alteration.salted_password:
            return ErrorCode.unacceptable_credential, "Salt and salted password must not be empty"
    return None


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    store = CredentialStore(ctx.broker.store, ctx.broker.keys)
    alterations = [(a, False) for a in request.deletions] + [(a, True) for a in request.upsertions]
    pairs = Counter((a.name, int(a.mechanism)) for a, _ in alterations)
    users = list(dict.fromkeys(a.name for a, _ in alterations))
    errors: dict[str, tuple[ErrorCode, str]] = {}
    for a, upsert in alterations:
        if a.name in errors:
            continue
        problem = _check(a, upsert)
        if problem is None and pairs[(a.name, int(a.mechanism))] > 1:
            problem = ErrorCode.duplicate_resource, "A user credential cannot be altered twice in the same request"
        if problem is None and not upsert:
            if await store.get(a.name, MECHANISM_NAMES[int(a.mechanism)]) is None:
                problem = ErrorCode.resource_not_found, "Attempt to delete a user credential that does not exist"
        if problem is not None:
            errors[a.name] = problem
    for a, upsert in alterations:
        if a.name in errors:
            continue
        mechanism = MECHANISM_NAMES[int(a.mechanism)]
        if upsert:
            credential = credential_from_salted(mechanism, bytes(a.salt), int(a.iterations), bytes(a.salted_password))
            await store.put(a.name, mechanism, credential)
        else:
            await store.delete(a.name, mechanism)
    results = []
    for user in users:
        code, message = errors.get(user, (ErrorCode.none, None))
        results.append(make(mod.AlterUserScramCredentialsResult, user=user, error_code=code, error_message=message))
    return make(mod.AlterUserScramCredentialsResponse, throttle_time=NO_THROTTLE, results=tuple(results))
