"""SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677), the server side, and the stored credential.

A credential keeps the salt, the iteration count, StoredKey and ServerKey; never the password nor the salted
password. Kafka's SCRAM extensions (``tokenauth``) are not supported: delegation tokens do not exist here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

MECHANISM_IDS = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}
"""KIP-554's ScramMechanism codes (DescribeUserScramCredentials / AlterUserScramCredentials)."""
MECHANISM_NAMES = {v: k for k, v in MECHANISM_IDS.items()}
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 16384
_HASH = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


class ScramError(Exception):
    """The exchange failed; the message is safe to send to the client and to log."""


@dataclass(frozen=True, slots=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def encode(self) -> bytes:
        return json.dumps({
            "salt": base64.b64encode(self.salt).decode(),
            "iterations": self.iterations,
            "stored_key": base64.b64encode(self.stored_key).decode(),
            "server_key": base64.b64encode(self.server_key).decode(),
        }).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ScramCredential:
        d = json.loads(raw)
        return cls(base64.b64decode(d["salt"]), int(d["iterations"]), base64.b64decode(d["stored_key"]),
                   base64.b64decode(d["server_key"]))


def _hmac(name: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, name).digest()


def salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802 (PBKDF2 with HMAC of the mechanism's hash)."""
    return hashlib.pbkdf2_hmac(_HASH[mechanism], password.encode(), salt, iterations)


def credential_from_salted(mechanism: str, salt: bytes, iterations: int, salted: bytes) -> ScramCredential:
    """The stored form of a salted password (what AlterUserScramCredentials sends)."""
    name = _HASH[mechanism]
    client_key = _hmac(name, salted, b"Client Key")
    return ScramCredential(salt, iterations, hashlib.new(name, client_key).digest(), _hmac(name, salted, b"Server Key"))


def new_credential(mechanism: str, password: str, iterations: int = MIN_ITERATIONS) -> ScramCredential:
    salt = secrets.token_bytes(32)
    return credential_from_salted(mechanism, salt, iterations, salted_password(mechanism, password, salt, iterations))


def password_matches(mechanism: str, credential: ScramCredential, password: str) -> bool:
    """Whether ``password`` is the one the credential was made from (SASL PLAIN over the SCRAM store)."""
    salted = salted_password(mechanism, password, credential.salt, credential.iterations)
    made = credential_from_salted(mechanism, credential.salt, credential.iterations, salted)
    return hmac.compare_digest(made.stored_key, credential.stored_key)


def _attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramError(f"Invalid SCRAM message attribute {part[:40]!r}")
        out[key] = value
    return out


def _saslname(name: str) -> str:
    """RFC 5802 saslname: '=2C' is ',' and '=3D' is '='; any other '=' is invalid."""
    out = name.replace("=2C", ",").replace("=3D", "=")
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise ScramError("Invalid user name encoding")
    return out


@dataclass(frozen=True, slots=True)
class ClientFirst:
    user: str
    nonce: str
    bare: str
    gs2_header: str


def parse_client_first(data: bytes) -> ClientFirst:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ScramError("Invalid SCRAM client first message: not UTF-8") from None
    gs2, sep, rest = text.partition(",")
    authzid, sep2, bare = rest.partition(",")
    if not sep or not sep2 or gs2 not in ("n", "y") or (authzid and not authzid.startswith("a=")):
        raise ScramError("Invalid SCRAM client first message (channel binding is not supported)")
    attrs = _attributes(bare)
    if "n" not in attrs or "r" not in attrs or not attrs["r"]:
        raise ScramError("Invalid SCRAM client first message: no user name or nonce")
    user = _saslname(attrs["n"])
    if authzid and _saslname(authzid[2:]) != user:
        raise ScramError("Authentication failed: Client requested an authorization id that is different from username")
    return ClientFirst(user, attrs["r"], bare, f"{gs2},{authzid},")


class ScramExchange:
    """One server-side SCRAM exchange: ``first`` answers the client-first message, ``final`` checks the proof."""

    def __init__(self, mechanism: str, client: ClientFirst, credential: ScramCredential) -> None:
        self.mechanism = mechanism
        self.client = client
        self.credential = credential
        self.nonce = client.nonce + base64.b64encode(secrets.token_bytes(24)).decode()
        self.server_first = (
            f"r={self.nonce},s={base64.b64encode(credential.salt).decode()},i={credential.iterations}"
        )

    def final(self, data: bytes) -> bytes:
        """The server-final message; ScramError when the proof is wrong."""
        name = _HASH[self.mechanism]
        try:
            text = data.decode()
            without_proof, sep, proof_part = text.rpartition(",p=")
            if not sep:
                raise ScramError("Invalid SCRAM client final message: no proof")
            attrs = _attributes(without_proof)
            proof = base64.b64decode(proof_part, validate=True)
        except (UnicodeDecodeError, ValueError):
            raise ScramError("Invalid SCRAM client final message") from None
        if attrs.get("r") != self.nonce:
            raise ScramError("Invalid SCRAM client final message: the nonce does not match")
        if attrs.get("c") != base64.b64encode(self.client.gs2_header.encode()).decode():
            raise ScramError("Invalid SCRAM client final message: channel binding does not match")
        auth_message = f"{self.client.bare},{self.server_first},{without_proof}".encode()
        signature = _hmac(name, self.credential.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("Invalid SCRAM client final message: bad proof length")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(name, client_key).digest(), self.credential.stored_key):
            raise ScramError(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism "
                + self.mechanism
            )
        verifier = _hmac(name, self.credential.server_key, auth_message)
        return b"v=" + base64.b64encode(verifier)
