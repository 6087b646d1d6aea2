"""aiokafka over SASL_SSL (SCRAM-SHA-512, PLAIN) and mTLS; a wrong password fails with error 58
(SaslAuthenticationFailed, logged by aiokafka as the cause of KafkaConnectionError), an untrusted
certificate is refused."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context

from .security_fixtures import PASSWORD, USER, SecureBroker


def _sasl(sb: SecureBroker, mechanism: str, password: str = PASSWORD) -> dict[str, Any]:
    return {"bootstrap_servers": sb.address(sb.sasl_ssl), "security_protocol": "SASL_SSL",
            "sasl_mechanism": mechanism, "sasl_plain_username": USER, "sasl_plain_password": password,
            "ssl_context": create_ssl_context(cafile=str(sb.certs.ca))}


def _mtls(sb: SecureBroker, cert: str, key: str) -> dict[str, Any]:
    ctx = create_ssl_context(cafile=str(sb.certs.ca), certfile=cert, keyfile=key)
    return {"bootstrap_servers": sb.address(sb.ssl), "security_protocol": "SSL", "ssl_context": ctx}


async def _roundtrip(conf: dict[str, Any]) -> None:
    topic = f"sec-ak-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(**conf)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"v1", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**conf)
    await consumer.start()
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    assert record.value == b"v1"


def test_scram_sha_512(secure_broker: SecureBroker) -> None:
    asyncio.run(_roundtrip(_sasl(secure_broker, "SCRAM-SHA-512")))


def test_plain(secure_broker: SecureBroker) -> None:
    asyncio.run(_roundtrip(_sasl(secure_broker, "PLAIN")))


def test_mtls(secure_broker: SecureBroker) -> None:
    asyncio.run(_roundtrip(_mtls(secure_broker, str(secure_broker.certs.client_cert),
                                 str(secure_broker.certs.client_key))))


async def _start_fails(conf: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(**conf)
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


def test_wrong_password(secure_broker: SecureBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="aiokafka")
    asyncio.run(_start_fails(_sasl(secure_broker, "SCRAM-SHA-512", "wrong")))
    assert any("SaslAuthenticationFailed" in r.getMessage() for r in caplog.records), caplog.text


def test_untrusted_certificate(secure_broker: SecureBroker) -> None:
    asyncio.run(_start_fails(_mtls(secure_broker, str(secure_broker.certs.rogue_cert),
                                   str(secure_broker.certs.rogue_key))))
