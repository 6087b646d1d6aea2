"""SASL PLAIN (RFC 4616): ``[authzid] NUL authcid NUL passwd``.

PLAIN users are the SCRAM users: the password is checked against the user's stored SCRAM credential
(SCRAM-SHA-512 first, else SCRAM-SHA-256) by salting it the same way, so there is one user store and no
password is kept anywhere. Use PLAIN only over TLS (SASL_SSL): the password crosses the wire.
"""

from __future__ import annotations

import asyncio

from brokers.security.credentials import CredentialStore
from brokers.security.scram import ScramError, password_matches

FAILED = "Authentication failed: Invalid username or password"


def parse(data: bytes) -> tuple[str, str]:
    """(user, password); ScramError-like ValueError on a malformed message."""
    parts = data.split(b"\x00")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError("Invalid SASL/PLAIN response: expected 3 tokens")
    try:
        authzid, user, password = (p.decode() for p in parts)
    except UnicodeDecodeError:
        raise ValueError("Invalid SASL/PLAIN response: not UTF-8") from None
    if authzid and authzid != user:
        raise ValueError("Authentication failed: Client requested an authorization id that is different from username")
    return user, password


async def authenticate(credentials: CredentialStore, data: bytes) -> str:
    """The authenticated user name; ScramError (a message for the client) when refused."""
    try:
        user, password = parse(data)
    except ValueError as e:
        raise ScramError(str(e)) from None
    for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
        credential = await credentials.get(user, mechanism)
        if credential is not None:
            if await asyncio.to_thread(password_matches, mechanism, credential, password):
                return user
            break
    raise ScramError(FAILED)
