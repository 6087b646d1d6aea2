"""Listener configs (brokers/security/listeners.py), SCRAM keys, and the certificate principal's spelling."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from brokers.config import BrokerConfig, ConfigError
from brokers.security.listeners import listeners_of, protocol_map
from brokers.security.principal import KafkaPrincipal
from brokers.security.tls import certificate_principal
from metadata.keys import Keys


def _config(*pairs: str) -> BrokerConfig:
    return BrokerConfig(host="127.0.0.1", port=9092).with_overrides(pairs)


def test_default_is_one_plaintext_listener() -> None:
    [spec] = listeners_of(BrokerConfig(host="127.0.0.1", port=9092, advertised_host="h", advertised_port=1))
    assert (spec.name, spec.protocol, spec.advertised_host, spec.advertised_port) == ("PLAINTEXT", "PLAINTEXT", "h", 1)


def test_named_listeners_with_map_and_advertised() -> None:
    specs = listeners_of(_config(
        "listeners=INTERNAL://127.0.0.1:9092,sasl_ssl://127.0.0.1:9094",
        "advertised.listeners=SASL_SSL://kafka.example:19094",
        "listener.security.protocol.map=INTERNAL:PLAINTEXT",
    ))
    assert [(s.name, s.protocol, s.port, s.advertised_host, s.advertised_port) for s in specs] == [
        ("INTERNAL", "PLAINTEXT", 9092, "127.0.0.1", 9092),
        ("SASL_SSL", "SASL_SSL", 9094, "kafka.example", 19094),
    ]
    assert specs[1].tls and specs[1].sasl and not specs[0].tls


@pytest.mark.parametrize(("pairs", "message"), [
    (("listeners=X://127.0.0.1:1",), "no security protocol"),
    (("listeners=PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:1",), "used by two listeners"),
    (("listeners=PLAINTEXT://0.0.0.0:1",), "advertised.listeners"),
    (("listeners=PLAINTEXT://127.0.0.1:x",), "not a number"),
    (("advertised.listeners=PLAINTEXT://h:1",), "listeners is not"),
    (("listeners= , ",), "empty"),
])
def test_bad_listeners(pairs: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        listeners_of(_config(*pairs))


def test_bad_protocol_map_and_client_auth() -> None:
    with pytest.raises(ConfigError, match="not one of"):
        protocol_map("A:TLS")
    with pytest.raises(ConfigError, match=r"ssl\.client\.auth"):
        _config("ssl.client.auth=maybe")


def test_secrets_are_not_reported() -> None:
    configs = _config("ssl.key.password=s3cret").broker_configs()
    assert "ssl.key.password" not in configs and "s3cret" not in configs.values()


def test_scram_keys_round_trip() -> None:
    keys = Keys("c")
    key = keys.scram_credential("a/b,c", "SCRAM-SHA-512")
    assert key.startswith(keys.scram_prefix()) and key.count("/") == keys.scram_prefix().count("/") + 1
    assert keys.scram_credential_id(key) == ("a/b,c", "SCRAM-SHA-512")
    with pytest.raises(ValueError, match=r"SCRAM"):
        keys.scram_credential_id("/tidelog/c/topics/x")


def test_certificate_principal_is_kafka_spelling() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "eng"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certificate_principal(der) == KafkaPrincipal("User", "CN=alice,OU=eng,O=acme")
    assert certificate_principal(None) is None
    assert certificate_principal(b"junk") is None


def test_broker_record_carries_listeners_and_endpoint_picks_by_name() -> None:
    from brokers.routing import Endpoint
    from metadata.models import BrokerRecord

    record = BrokerRecord(2, "h", 9092, None, (("PLAINTEXT", "h", 9092), ("SASL_SSL", "kafka.example", 9094)))
    assert BrokerRecord.decode(record.encode()) == record
    old = BrokerRecord(3, "h", 1)  # a registration without listeners (an older broker) decodes as before
    assert BrokerRecord.decode(old.encode()) == old and b"listeners" not in old.encode()
    endpoint = Endpoint(2, "h", 9092, None, record.listeners)
    assert endpoint.on("SASL_SSL") == ("kafka.example", 9094)
    assert endpoint.on("SSL") == ("h", 9092)  # no listener of that name: the first address
    assert endpoint.on(None) == ("h", 9092)


def test_request_context_address_per_listener() -> None:
    from types import SimpleNamespace

    from brokers.handlers.base import RequestContext
    from brokers.routing import Endpoint
    from brokers.security.listeners import ListenerSpec

    spec = ListenerSpec("SASL_SSL", "0.0.0.0", 9094, "SASL_SSL", "me.example", 19094)
    broker = SimpleNamespace(routing=SimpleNamespace(node_id=1))
    ctx = RequestContext(broker, 3, 12, 0, None, "peer", listener=spec)  # type: ignore[arg-type]
    plain = RequestContext(broker, 3, 12, 0, None, "peer")  # type: ignore[arg-type]
    me = Endpoint(1, "h1", 9092)
    other = Endpoint(2, "h2", 9092, None, (("PLAINTEXT", "h2", 9092), ("SASL_SSL", "other.example", 29094)))
    assert ctx.address(me) == ("me.example", 19094)
    assert ctx.address(other) == ("other.example", 29094)
    assert plain.address(other) == ("h2", 9092)
