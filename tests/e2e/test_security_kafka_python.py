"""kafka-python over SASL_SSL (SCRAM-SHA-512, PLAIN) and mTLS; a wrong password fails with
SaslAuthenticationFailedError (error 58), an untrusted certificate is refused."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import kafka
import kafka.errors
import pytest

from .security_fixtures import PASSWORD, USER, SecureBroker


def _sasl(sb: SecureBroker, mechanism: str, password: str = PASSWORD) -> dict[str, Any]:
    return {"bootstrap_servers": sb.address(sb.sasl_ssl), "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism, "sasl_plain_username": USER, "sasl_plain_password": password,
            "ssl_cafile": str(sb.certs.ca), "request_timeout_ms": 10_000}


def _mtls(sb: SecureBroker, cert: str, key: str) -> dict[str, Any]:
    return {"bootstrap_servers": sb.address(sb.ssl), "security_protocol": "SSL", "ssl_cafile": str(sb.certs.ca),
            "ssl_certfile": cert, "ssl_keyfile": key, "request_timeout_ms": 10_000}


def _roundtrip(conf: dict[str, Any]) -> None:
    topic = f"sec-kp-{uuid.uuid4().hex[:8]}"
    producer = kafka.KafkaProducer(**conf)
    try:
        meta = producer.send(topic, b"v1", key=b"k").get(timeout=30)
    finally:
        producer.close()
    consumer = kafka.KafkaConsumer(**conf, consumer_timeout_ms=10_000)
    try:
        tp = kafka.TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        records = [r.value for r in consumer]
    finally:
        consumer.close()
    assert records[:1] == [b"v1"]


def test_scram_sha_512(secure_broker: SecureBroker) -> None:
    _roundtrip(_sasl(secure_broker, "SCRAM-SHA-512"))


def test_plain(secure_broker: SecureBroker) -> None:
    _roundtrip(_sasl(secure_broker, "PLAIN"))


def test_mtls(secure_broker: SecureBroker) -> None:
    _roundtrip(_mtls(secure_broker, str(secure_broker.certs.client_cert), str(secure_broker.certs.client_key)))


def test_wrong_password(secure_broker: SecureBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="kafka")
    with pytest.raises(kafka.errors.KafkaError):  # bootstrap gives up; the cause is logged by the client
        kafka.KafkaProducer(**{**_sasl(secure_broker, "SCRAM-SHA-512", "wrong"), "max_block_ms": 5000})
    assert any("invalid credentials" in r.getMessage() for r in caplog.records), caplog.text


def test_untrusted_certificate(secure_broker: SecureBroker) -> None:
    conf = _mtls(secure_broker, str(secure_broker.certs.rogue_cert), str(secure_broker.certs.rogue_key))
    with pytest.raises(kafka.errors.KafkaError):
        kafka.KafkaProducer(**conf, max_block_ms=5000)
