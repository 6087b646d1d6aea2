"""TLS for SSL and SASL_SSL listeners, with Python's ssl module.

Configs (PEM files, as Kafka 2.7+ accepts with ``ssl.keystore.type=PEM``): ``ssl.keystore.location`` is one
PEM file holding the private key and the certificate chain, ``ssl.key.password`` the key's password if it is
encrypted, ``ssl.truststore.location`` the PEM CA certificates client certificates are checked against,
``ssl.client.auth`` required | requested | none (SSL listeners only; SASL_SSL ones authenticate with SASL and ask
for no certificate, as Kafka does since KIP-684). The keystore is reloaded when its file changes (checked every
``RELOAD_S``): new connections get the new certificate, open ones keep theirs.

The principal of a client that presented a certificate is ``User:<subject DN>`` spelled as Kafka's default
principal builder spells it (X500Principal.getName(), RFC 2253: most specific first, ``CN=alice,OU=eng``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from dataclasses import dataclass

from cryptography import x509

from brokers.config import BrokerConfig, ConfigError
from brokers.security.principal import USER, KafkaPrincipal

log = logging.getLogger(__name__)
RELOAD_S = 1.0
_VERIFY = {"required": ssl.CERT_REQUIRED, "requested": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    keystore: str
    key_password: str
    truststore: str
    client_auth: str

    @classmethod
    def of(cls, config: BrokerConfig, sasl: bool = False) -> TlsFiles:
        """A SASL_SSL listener asks for no client certificate (KIP-684: ssl.client.auth is for SSL listeners)."""
        return cls(config.ssl_keystore_location, config.ssl_key_password, config.ssl_truststore_location,
                   "none" if sasl else config.ssl_client_auth)

    def context(self) -> ssl.SSLContext:
        """A server context; ConfigError naming the file when one cannot be used."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.load_keystore(ctx)
        if self.truststore:
            try:
                ctx.load_verify_locations(cafile=self.truststore)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"ssl.truststore.location {self.truststore}: {e}") from None
        ctx.verify_mode = _VERIFY[self.client_auth]
        return ctx

    def load_keystore(self, ctx: ssl.SSLContext) -> None:
        try:
            ctx.load_cert_chain(self.keystore, password=self.key_password or None)
        except (OSError, ssl.SSLError) as e:  # the message never holds the password
            raise ConfigError(f"ssl.keystore.location {self.keystore}: {e}") from None

    def stamp(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.keystore)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)


class ReloadingContext:
    """One listener's SSLContext; ``run()`` reloads the keystore into it when the file changes."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = files.context()
        self._stamp = files.stamp()
        self._task: asyncio.Task[None] | None = None

    def check(self) -> bool:
        """Reload if the keystore file changed; True if a new certificate was loaded."""
        stamp = self.files.stamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            self.files.load_keystore(self.context)
        except ConfigError as e:  # half-written files: keep the old certificate, try again next time
            log.warning("keeping the current certificate: %s", e)
            return False
        self._stamp = stamp
        log.info("reloaded the certificate from %s", self.files.keystore)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_S)
            self.check()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def secret_file_warnings(config: BrokerConfig) -> list[str]:
    """Warnings for files holding secrets that other users can read (the keystore holds the private key)."""
    out = []
    for key, path in (("ssl.keystore.location", config.ssl_keystore_location),):
        if not path:
            continue
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & 0o044:
            out.append(f"{key} {path} holds a private key and is readable by other users (chmod 600 it)")
    return out


def certificate_principal(der: bytes | None) -> KafkaPrincipal | None:
    """``User:<subject DN>`` of a peer certificate (DER), or None without one."""
    if not der:
        return None
    try:
        subject = x509.load_der_x509_certificate(der).subject
    except ValueError:
        return None
    return KafkaPrincipal(USER, subject.rfc4514_string())
