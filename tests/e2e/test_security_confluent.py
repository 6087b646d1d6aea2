"""confluent-kafka (librdkafka) over SASL_SSL (SCRAM-SHA-512, PLAIN), SASL_PLAINTEXT (SCRAM-SHA-256) and mTLS;
a wrong password and an untrusted certificate are refused."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer

from .security_fixtures import PASSWORD, USER, SecureBroker

POLL_S = 30.0


def _sasl(sb: SecureBroker, mechanism: str, password: str = PASSWORD, port: int | None = None) -> dict[str, Any]:
    tls = port is None
    return {
        "bootstrap.servers": sb.address(sb.sasl_ssl if tls else port),
        "security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism, "sasl.username": USER, "sasl.password": password,
        **({"ssl.ca.location": str(sb.certs.ca)} if tls else {}),
    }


def _mtls(sb: SecureBroker, cert: str, key: str) -> dict[str, Any]:
    return {"bootstrap.servers": sb.address(sb.ssl), "security.protocol": "SSL", "ssl.ca.location": str(sb.certs.ca),
            "ssl.certificate.location": cert, "ssl.key.location": key}


def _roundtrip(conf: dict[str, Any]) -> None:
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    producer = Producer(conf)
    producer.produce(topic, b"secret value", key=b"k")
    assert producer.flush(POLL_S) == 0
    consumer = Consumer({**conf, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                assert msg.value() == b"secret value"
                return
        raise AssertionError("no record consumed")
    finally:
        consumer.close()


def _first_error(conf: dict[str, Any]) -> KafkaError:
    errors: list[KafkaError] = []
    producer = Producer({**conf, "error_cb": errors.append})
    producer.produce("never", b"x")
    deadline = time.monotonic() + POLL_S
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    assert errors, "no error reported"
    return errors[0]


def test_scram_sha_512_over_sasl_ssl(secure_broker: SecureBroker) -> None:
    _roundtrip(_sasl(secure_broker, "SCRAM-SHA-512"))


def test_plain_over_sasl_ssl(secure_broker: SecureBroker) -> None:
    _roundtrip(_sasl(secure_broker, "PLAIN"))


def test_scram_sha_256_over_sasl_plaintext(secure_broker: SecureBroker) -> None:
    _roundtrip(_sasl(secure_broker, "SCRAM-SHA-256", port=secure_broker.sasl_plaintext))


def test_mtls(secure_broker: SecureBroker) -> None:
    _roundtrip(_mtls(secure_broker, str(secure_broker.certs.client_cert), str(secure_broker.certs.client_key)))


def test_wrong_password_is_an_authentication_error(secure_broker: SecureBroker) -> None:
    for mechanism in ("SCRAM-SHA-512", "PLAIN"):
        error = _first_error(_sasl(secure_broker, mechanism, password="wrong"))  # noqa: S106
        assert error.code() == KafkaError._AUTHENTICATION, error
        assert "SASL authentication error" in error.str() or "Authentication failed" in error.str(), error


def test_untrusted_certificate_is_refused(secure_broker: SecureBroker) -> None:
    error = _first_error(_mtls(secure_broker, str(secure_broker.certs.rogue_cert), str(secure_broker.certs.rogue_key)))
    assert error.code() in (KafkaError._TRANSPORT, KafkaError._SSL, KafkaError._ALL_BROKERS_DOWN), error


def test_no_certificate_is_refused_when_required(secure_broker: SecureBroker) -> None:
    conf = {"bootstrap.servers": secure_broker.address(secure_broker.ssl), "security.protocol": "SSL",
            "ssl.ca.location": str(secure_broker.certs.ca)}
    error = _first_error(conf)
    assert error.code() in (KafkaError._TRANSPORT, KafkaError._SSL, KafkaError._ALL_BROKERS_DOWN), error
