"""SCRAM (brokers/security/scram.py) against RFC 7677's SCRAM-SHA-256 example, PLAIN parsing, and the
Authenticator state machine with an in-memory credential store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

import pytest
from kio.schema.errors import ErrorCode

from brokers.security import sasl_plain
from brokers.security.authenticator import Authenticator, AuthRefused
from brokers.security.listeners import ListenerSpec
from brokers.security.principal import ANONYMOUS, KafkaPrincipal
from brokers.security.scram import (
    ScramCredential,
    ScramError,
    ScramExchange,
    credential_from_salted,
    new_credential,
    parse_client_first,
    password_matches,
    salted_password,
)

# RFC 7677 section 3: user "user", password "pencil".
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
CLIENT_FINAL = b"c=biws,r=" + SERVER_NONCE.encode() + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _rfc_credential() -> ScramCredential:
    salted = salted_password("SCRAM-SHA-256", "pencil", SALT, 4096)
    return credential_from_salted("SCRAM-SHA-256", SALT, 4096, salted)


def test_rfc7677_example() -> None:
    exchange = ScramExchange("SCRAM-SHA-256", parse_client_first(CLIENT_FIRST), _rfc_credential())
    exchange.nonce = SERVER_NONCE  # the RFC's server nonce instead of a random one
    exchange.server_first = f"r={SERVER_NONCE},s={base64.b64encode(SALT).decode()},i=4096"
    assert exchange.server_first == (
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert exchange.final(CLIENT_FINAL) == SERVER_FINAL


def test_wrong_proof_and_nonce_are_refused() -> None:
    exchange = ScramExchange("SCRAM-SHA-256", parse_client_first(CLIENT_FIRST), _rfc_credential())
    exchange.nonce = SERVER_NONCE
    exchange.server_first = f"r={SERVER_NONCE},s={base64.b64encode(SALT).decode()},i=4096"
    bad_proof = CLIENT_FINAL[:-5] + b"AAAA="
    with pytest.raises(ScramError, match="invalid credentials"):
        exchange.final(bad_proof)
    with pytest.raises(ScramError, match="nonce"):
        exchange.final(CLIENT_FINAL.replace(b"r=rOpr", b"r=XOpr"))
    for garbage in (b"", b"\xff\xfe", b"c=biws,r=x", b"p=!!!"):
        with pytest.raises(ScramError):
            exchange.final(garbage)


@pytest.mark.parametrize(
    "message", [b"", b"n", b"p=tls-unique,,n=u,r=x", b"n,,r=x", b"n,,n=u", b"\xff", b"n,,n=a=b,r=x"]
)
def test_malformed_client_first(message: bytes) -> None:
    with pytest.raises(ScramError):
        parse_client_first(message)


def test_stored_credential_keeps_no_password() -> None:
    cred = new_credential("SCRAM-SHA-512", "hunter2")
    raw = cred.encode()
    assert b"hunter2" not in raw
    assert ScramCredential.decode(raw) == cred
    assert password_matches("SCRAM-SHA-512", cred, "hunter2")
    assert not password_matches("SCRAM-SHA-512", cred, "hunter3")
    salted = salted_password("SCRAM-SHA-512", "hunter2", cred.salt, cred.iterations)
    assert cred.stored_key == hashlib.sha512(hmac.new(salted, b"Client Key", "sha512").digest()).digest()


@pytest.mark.parametrize("message", [b"", b"a\0b", b"\0\0pw", b"\0user\0", b"x\0user\0pw", b"\0\xff\0pw"])
def test_plain_malformed(message: bytes) -> None:
    with pytest.raises(ValueError, match=r"PLAIN|authorization id"):
        sasl_plain.parse(message)


class _Credentials:
    def __init__(self, creds: dict[tuple[str, str], ScramCredential]) -> None:
        self.creds = creds

    async def get(self, user: str, mechanism: str) -> ScramCredential | None:
        return self.creds.get((user, mechanism))


SASL = ListenerSpec("SASL_PLAINTEXT", "127.0.0.1", 1, "SASL_PLAINTEXT", "127.0.0.1", 1)


def _auth(reauth_ms: int = 0) -> Authenticator:
    creds = {("alice", "SCRAM-SHA-512"): new_credential("SCRAM-SHA-512", "pw")}
    return Authenticator(SASL, ("PLAIN", "SCRAM-SHA-512"), _Credentials(creds), reauth_ms)  # type: ignore[arg-type]


def test_state_machine_plain_and_expiry() -> None:
    auth = _auth(reauth_ms=1000)
    auth.admit(18, 0.0)  # ApiVersions before authentication
    with pytest.raises(AuthRefused):
        auth.admit(3, 0.0)
    assert auth.handshake("SCRAM-SHA-256") == ErrorCode.unsupported_sasl_mechanism
    assert auth.handshake("PLAIN") == ErrorCode.none
    result = asyncio.run(auth.authenticate(b"\0alice\0pw", 10.0))
    assert (result.error, result.session_lifetime_ms) == (ErrorCode.none, 1000)
    assert auth.principal == KafkaPrincipal("User", "alice")
    auth.admit(3, 10.5)
    with pytest.raises(AuthRefused, match="expired"):
        auth.admit(3, 11.0)
    auth.admit(17, 11.0)  # a re-authentication may start


def test_failed_exchange_closes() -> None:
    auth = _auth()
    assert auth.handshake("PLAIN") == ErrorCode.none
    result = asyncio.run(auth.authenticate(b"\0alice\0nope", 0.0))
    assert result.error == ErrorCode.sasl_authentication_failed and auth.closing
    assert auth.principal == ANONYMOUS
    with pytest.raises(AuthRefused):
        auth.admit(18, 0.0)


def test_unknown_scram_user_and_authenticate_before_handshake() -> None:
    auth = _auth()
    assert asyncio.run(auth.authenticate(b"x", 0.0)).error == ErrorCode.illegal_sasl_state
    auth = _auth()
    auth.handshake("SCRAM-SHA-512")
    assert asyncio.run(auth.authenticate(b"n,,n=bob,r=abc", 0.0)).error == ErrorCode.sasl_authentication_failed
