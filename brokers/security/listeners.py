"""Named listeners, as Kafka configures them: ``listeners``, ``advertised.listeners``,
``listener.security.protocol.map`` and ``sasl.enabled.mechanisms``.

``listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094`` makes one socket per entry. A listener's
name maps to its security protocol through ``listener.security.protocol.map`` (``NAME:PROTOCOL,...``); the
four protocol names map to themselves by default, as in Kafka. Without ``listeners`` the broker has one
PLAINTEXT listener on ``--listen`` (advertised as ``--advertised``). The first listener is the one a cluster
broker registers for the other brokers (Tidelog has no inter-broker Kafka traffic).
"""

from __future__ import annotations

from dataclasses import dataclass

from brokers.config import BrokerConfig, ConfigError, parse_hostport

PLAINTEXT = "PLAINTEXT"
SSL = "SSL"
SASL_PLAINTEXT = "SASL_PLAINTEXT"
SASL_SSL = "SASL_SSL"
PROTOCOLS = (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One listener: where it binds, what it tells clients, and how its connections authenticate."""

    name: str
    host: str
    port: int
    protocol: str
    advertised_host: str
    advertised_port: int

    @property
    def tls(self) -> bool:
        return self.protocol in (SSL, SASL_SSL)

    @property
    def sasl(self) -> bool:
        return self.protocol in (SASL_PLAINTEXT, SASL_SSL)


def _entries(text: str, what: str) -> list[tuple[str, str, int]]:
    """``NAME://HOST:PORT,...`` -> [(NAME, HOST, PORT)], names upper-cased and unique."""
    out: list[tuple[str, str, int]] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, address = item.partition("://")
        if not sep or not name:
            raise ConfigError(f"{what}: {item!r} is not NAME://HOST:PORT")
        host, port = parse_hostport(address, f"{what} {name}")
        name = name.strip().upper()
        if any(n == name for n, _, _ in out):
            raise ConfigError(f"{what}: listener name {name} appears twice")
        out.append((name, host, port))
    return out


def protocol_map(text: str) -> dict[str, str]:
    """``listener.security.protocol.map``: Kafka's defaults (each protocol named for itself) plus the given pairs."""
    mapping = {p: p for p in PROTOCOLS}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, protocol = item.partition(":")
        protocol = protocol.strip().upper()
        if not sep or not name.strip():
            raise ConfigError(f"listener.security.protocol.map: {item!r} is not NAME:PROTOCOL")
        if protocol not in PROTOCOLS:
            raise ConfigError(
                f"listener.security.protocol.map: {protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        mapping[name.strip().upper()] = protocol
    return mapping


def enabled_mechanisms(config: BrokerConfig) -> tuple[str, ...]:
    """``sasl.enabled.mechanisms``, checked against the ones Tidelog implements."""
    names = tuple(m.strip().upper() for m in config.sasl_enabled_mechanisms.split(",") if m.strip())
    unknown = [m for m in names if m not in MECHANISMS]
    if unknown:
        raise ConfigError(
            f"sasl.enabled.mechanisms: {', '.join(unknown)} not supported (supported: {', '.join(MECHANISMS)})"
        )
    return names


def listeners_of(config: BrokerConfig) -> list[ListenerSpec]:
    """Every listener of the broker, first the one registered for the cluster; raises ConfigError."""
    if not config.listeners:
        if config.advertised_listeners:
            raise ConfigError("advertised.listeners is set but listeners is not")
        adv_host, adv_port = config.advertised
        return [ListenerSpec(PLAINTEXT, config.host, config.port, PLAINTEXT, adv_host, adv_port)]
    mapping = protocol_map(config.listener_security_protocol_map)
    bound = _entries(config.listeners, "listeners")
    if not bound:
        raise ConfigError("listeners is empty")
    advertised = {
        name: (host, port) for name, host, port in _entries(config.advertised_listeners, "advertised.listeners")
    }
    names = {name for name, _, _ in bound}
    for name in advertised:
        if name not in names:
            raise ConfigError(f"advertised.listeners names {name}, which is not in listeners")
    out: list[ListenerSpec] = []
    ports: set[tuple[str, int]] = set()
    for name, host, port in bound:
        protocol = mapping.get(name)
        if protocol is None:
            raise ConfigError(
                f"listener {name} has no security protocol: add {name}:PROTOCOL to listener.security.protocol.map"
            )
        if port and (host, port) in ports:
            raise ConfigError(f"listeners: {host}:{port} is used by two listeners")
        ports.add((host, port))
        adv_host, adv_port = advertised.get(name, (host, port))
        if adv_host in ("0.0.0.0", "::", ""):  # noqa: S104 - checking, not binding
            raise ConfigError(
                f"listener {name} binds {host!r}: set advertised.listeners to an address clients can reach"
            )
        out.append(ListenerSpec(name, host, port, protocol, adv_host, adv_port))
    return out


def check_security(config: BrokerConfig) -> list[ListenerSpec]:
    """Everything about listeners, TLS and SASL that can be checked before the broker starts."""
    specs = listeners_of(config)
    mechanisms = enabled_mechanisms(config)
    if any(s.sasl for s in specs) and not mechanisms:
        raise ConfigError("a SASL listener needs sasl.enabled.mechanisms")
    if any(s.tls for s in specs):
        if not config.ssl_keystore_location:
            raise ConfigError(
                "an SSL or SASL_SSL listener needs ssl.keystore.location (a PEM file: key and certificate)"
            )
        if config.ssl_client_auth != "none" and not config.ssl_truststore_location:
            raise ConfigError(
                f"ssl.client.auth={config.ssl_client_auth} needs ssl.truststore.location (PEM CA certificates)"
            )
        from brokers.security.tls import TlsFiles

        TlsFiles.of(config).context()  # unreadable files, a wrong password or a key not matching: an error now
    return specs
