"""Per-connection authentication, as the Kafka listener (brokers/server.py) uses it.

``current`` holds the connection's Authenticator in the context of the tasks serving it (set before they are
created); None on a plain PLAINTEXT listener, whose requests are all ``User:ANONYMOUS``.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

from brokers.config import BrokerConfig
from brokers.security.authenticator import Authenticator
from brokers.security.credentials import CredentialStore
from brokers.security.listeners import ListenerSpec, enabled_mechanisms
from brokers.security.tls import certificate_principal

current: ContextVar[Authenticator | None] = ContextVar("tidelog_connection_auth", default=None)


def open_connection(
    config: BrokerConfig, listener: ListenerSpec | None, credentials: CredentialStore, writer: asyncio.StreamWriter
) -> Authenticator | None:
    """The new connection's Authenticator (also set as ``current``), or None when there is nothing to check."""
    if listener is None or not (listener.tls or listener.sasl):
        current.set(None)
        return None
    certificate = None
    if listener.tls and not listener.sasl:  # SASL_SSL: the principal is the SASL user, as in Kafka
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        certificate = certificate_principal(der)
    auth = Authenticator(listener, enabled_mechanisms(config), credentials, config.connections_max_reauth_ms,
                         certificate)
    current.set(auth)
    return auth
