"""The authentication state of one connection: TLS client certificate, SASL handshake and exchange, and
KIP-368 re-authentication.

On a SASL listener only ApiVersions, SaslHandshake and SaslAuthenticate are served before the exchange
succeeds; any other request closes the connection (Kafka's illegal SASL state). A failed exchange is answered
(SASL_AUTHENTICATION_FAILED with its message), then the connection is closed. With
``connections.max.reauth.ms`` > 0 a session lasts that long (SaslAuthenticate v1+ tells the client); a request
other than SaslHandshake after it expired closes the connection, and a client re-authenticates with a new
SaslHandshake + SaslAuthenticate on the same connection, as the same user.
"""

from __future__ import annotations

from dataclasses import dataclass

from kio.schema.errors import ErrorCode

from brokers.security import sasl_plain
from brokers.security.credentials import CredentialStore
from brokers.security.listeners import ListenerSpec
from brokers.security.principal import ANONYMOUS, USER, KafkaPrincipal
from brokers.security.scram import MECHANISM_IDS, ScramError, ScramExchange, parse_client_first

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
_BEFORE_AUTH = frozenset({API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE})


class AuthRefused(Exception):
    """The request is not allowed in the connection's state: the connection is closed."""


@dataclass(frozen=True, slots=True)
class AuthResult:
    error: ErrorCode
    message: str | None
    auth_bytes: bytes
    session_lifetime_ms: int


class Authenticator:
    def __init__(
        self,
        listener: ListenerSpec,
        mechanisms: tuple[str, ...],
        credentials: CredentialStore,
        reauth_ms: int,
        certificate: KafkaPrincipal | None = None,
    ) -> None:
        self.listener = listener
        self.mechanisms = mechanisms
        self._credentials = credentials
        self._reauth_ms = reauth_ms
        self.principal: KafkaPrincipal = certificate or ANONYMOUS
        self.authenticated = not listener.sasl
        self.closing = False
        """Set after a failed exchange: the connection closes once that answer is written."""
        self._mechanism: str | None = None  # chosen by the handshake, until the exchange ends
        self._scram: ScramExchange | None = None
        self._expires: float | None = None  # monotonic seconds; None: no re-authentication needed

    def admit(self, api_key: int, now: float) -> None:
        """Raise AuthRefused unless a request of ``api_key`` may be served now."""
        if self.closing:
            raise AuthRefused("authentication failed earlier on this connection")
        if api_key in _BEFORE_AUTH:
            return
        if not self.authenticated:
            raise AuthRefused(f"unexpected API {api_key} before SASL authentication (illegal SASL state)")
        if self._expires is not None and now >= self._expires:
            raise AuthRefused("the SASL session expired without re-authentication")

    def handshake(self, mechanism: str) -> ErrorCode:
        if not self.listener.sasl:
            return ErrorCode.illegal_sasl_state
        if self._mechanism is not None:
            return ErrorCode.illegal_sasl_state
        if mechanism not in self.mechanisms:
            return ErrorCode.unsupported_sasl_mechanism
        self._mechanism = mechanism
        return ErrorCode.none

    async def authenticate(self, data: bytes, now: float) -> AuthResult:
        mechanism = self._mechanism
        if mechanism is None:
            self.closing = True
            return AuthResult(ErrorCode.illegal_sasl_state, "SaslAuthenticate before SaslHandshake", b"", 0)
        try:
            if mechanism == "PLAIN":
                return self._done(await sasl_plain.authenticate(self._credentials, data), b"", now)
            if self._scram is None:
                first = parse_client_first(data)
                credential = await self._credentials.get(first.user, mechanism)
                if credential is None:
                    raise ScramError("Authentication failed: Invalid user credentials")
                self._scram = ScramExchange(mechanism, first, credential)
                return AuthResult(ErrorCode.none, None, self._scram.server_first.encode(), 0)
            final = self._scram.final(data)
            return self._done(self._scram.client.user, final, now)
        except ScramError as e:
            self.closing = True
            return AuthResult(ErrorCode.sasl_authentication_failed, str(e), b"", 0)

    def _done(self, user: str, auth_bytes: bytes, now: float) -> AuthResult:
        principal = KafkaPrincipal(USER, user)
        self._mechanism = None
        self._scram = None
        if self.authenticated and self.listener.sasl and principal != self.principal:
            self.closing = True
            return AuthResult(ErrorCode.sasl_authentication_failed,
                              "Cannot change principals during re-authentication", b"", 0)
        self.principal = principal
        self.authenticated = True
        lifetime = self._reauth_ms
        self._expires = now + lifetime / 1000 if lifetime else None
        return AuthResult(ErrorCode.none, None, auth_bytes, lifetime)


def known_mechanism(name: str) -> bool:
    return name == "PLAIN" or name in MECHANISM_IDS
