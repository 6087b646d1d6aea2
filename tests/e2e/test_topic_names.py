"""Issue 13 must-show 3: producing to ten kinds of illegal topic names with every client gets
INVALID_TOPIC_EXCEPTION (17) from the first answer, not a retry loop until a timeout, and creates nothing.

The ten kinds: empty, ".", "..", 250 characters, a space, a slash, non-ASCII, a colon, a trailing newline
(which a regex ending in "$" lets through), and a name differing from an existing topic only in '.' versus
'_' (Kafka refuses such a collision). What each client does with the answer is its own:

* librdkafka (confluent-kafka) fails the message with TOPIC_EXCEPTION (17) from the first Metadata answer.
* kafka-python 3 refuses eight kinds itself before sending anything (ValueError: its own copy of Kafka's
  rules) and raises InvalidTopicError (17) from the first Metadata answer for the other two.
* kafkajs refuses "" itself ("Invalid topic") and fails the send with the protocol error of code 17
  (non-retriable, so no retry) for the rest.
* aiokafka 0.14 logs "'NAME' is not a valid topic name" when the first Metadata answer arrives but keeps
  asking until its request_timeout_ms, then raises UnknownTopicOrPartitionError — its design, the same
  against Apache Kafka; the test shows the first answer carried the error and measures the loop.

Raw Produce requests to each name get 17 in one round trip, and CreateTopics through the admin clients
gets 17 for each name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import UnknownTopicOrPartitionError
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaProducer
from kafka.errors import InvalidTopicError

from .broker_process import BrokerProcess
from .conftest import NODE_DIR
from .helpers import create_topic
from .kafka_wire import Record as WireRecord
from .kafka_wire import (
    api_versions,
    connect,
    parse_produce_response,
    pick_version,
    produce_request,
    record_batch,
    recv_frame,
)

INVALID_TOPIC = 17
KAFKAJS_17 = "The request attempted to perform an operation on an invalid topic"  # kafkajs's text for code 17
TIMEOUT = 120.0  # hang guards only: a client that loops until its timeout fails on the error type instead


@pytest.fixture(scope="module")
def names(module_broker: BrokerProcess) -> Iterator[tuple[str, dict[str, str]]]:
    """The broker and the ten illegal names by kind (an existing "<x>.eu" makes "<x>_eu" collide)."""
    base = f"orders{uuid.uuid4().hex[:6]}"
    create_topic(module_broker.bootstrap, f"{base}.eu", 1)
    kinds = {
        "empty": "", "dot": ".", "dotdot": "..", "too long": "a" * 250, "space": "bad name",
        "slash": "bad/name", "non-ASCII": "caf\u00e9", "colon": "a:b", "trailing newline": f"{base}\n",
        "collision": f"{base}_eu",
    }
    yield module_broker.bootstrap, kinds


def _created(bootstrap: str, kinds: dict[str, str]) -> list[str]:
    """Which of the names exist now (none may)."""
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    return [n for n in kinds.values() if n in topics]


def test_raw_produce_answers_17_in_one_round_trip(names: tuple[str, dict[str, str]]) -> None:
    bootstrap, kinds = names
    data = record_batch([WireRecord(None, b"x")], int(time.time() * 1000))
    with connect(bootstrap) as sock:
        version = pick_version(api_versions(sock), 0, 3, 9)
        for corr, (kind, name) in enumerate(kinds.items(), start=10):
            sock.sendall(produce_request(version, name, 0, data, corr))
            result = parse_produce_response(version, recv_frame(sock))
            assert (result.correlation_id, result.error_code) == (corr, INVALID_TOPIC), kind
    assert _created(bootstrap, kinds) == []


def test_librdkafka_gets_17(names: tuple[str, dict[str, str]]) -> None:
    bootstrap, kinds = names
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 300_000})  # a timeout can't pass
    outcome: dict[str, tuple[Any, float]] = {}
    for kind, name in kinds.items():
        reports: list[Any] = []
        started = time.monotonic()
        producer.produce(name, b"x", on_delivery=lambda err, _msg, r=reports: r.append(err))
        assert producer.flush(TIMEOUT) == 0, kind
        outcome[kind] = (reports[0], time.monotonic() - started)
    for kind, (err, _s) in outcome.items():
        assert err is not None and err.code() == KafkaError.TOPIC_EXCEPTION == INVALID_TOPIC, (kind, err)
    print("librdkafka seconds to the error:", {k: round(s, 3) for k, (_e, s) in outcome.items()})
    assert _created(bootstrap, kinds) == []


def test_kafka_python_gets_17_or_refuses_itself(names: tuple[str, dict[str, str]]) -> None:
    bootstrap, kinds = names
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=int(TIMEOUT * 1000))
    outcome: dict[str, tuple[str, float]] = {}
    try:
        for kind, name in kinds.items():
            started = time.monotonic()
            with pytest.raises((ValueError, InvalidTopicError)) as refused:
                producer.send(name, b"x").get(timeout=TIMEOUT)
            outcome[kind] = (type(refused.value).__name__, time.monotonic() - started)
    finally:
        producer.close(timeout=10)
    from_broker = {k for k, (t, _s) in outcome.items() if t == "InvalidTopicError"}
    assert from_broker == {"trailing newline", "collision"}, outcome  # the rest: kafka-python's own check
    print("kafka-python (error, seconds):", {k: (t, round(s, 3)) for k, (t, s) in outcome.items()})
    assert _created(bootstrap, kinds) == []


def test_kafkajs_gets_17(names: tuple[str, dict[str, str]], node: str, tmp_path: Path) -> None:
    bootstrap, kinds = names
    (tmp_path / "names.json").write_text(json.dumps(list(kinds.values())))
    res = subprocess.run(
        [node, str(NODE_DIR / "limits.js"), "produce", bootstrap, str(tmp_path / "names.json"),
         str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=TIMEOUT + 60, check=False,
    )
    assert res.returncode == 0, f"kafkajs produce failed ({res.returncode}):\n{res.stderr[-4000:]}"
    results = {r["name"]: r for r in json.loads((tmp_path / "out.json").read_text())}
    for kind, name in kinds.items():
        r = results[name]
        assert not r["ok"], kind
        assert r["type"] == "KafkaJSNonRetriableError", (kind, r)
        assert r["message"] == ("Invalid topic" if name == "" else KAFKAJS_17), (kind, r)
    print("kafkajs ms to the error:", {k: results[n]["ms"] for k, n in kinds.items()})
    assert _created(bootstrap, kinds) == []


def test_aiokafka_sees_17_in_the_first_answer(names: tuple[str, dict[str, str]]) -> None:
    bootstrap, kinds = names
    seen: dict[str, float] = {}

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().endswith("is not a valid topic name") and record.args:
                seen.setdefault(str(record.args[0]), time.monotonic())

    handler = Catch()
    logger = logging.getLogger("aiokafka.cluster")
    logger.addHandler(handler)

    async def send_all() -> dict[str, tuple[str, float]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        await producer.start()
        try:
            async def one(name: str) -> tuple[str, float]:
                started = time.monotonic()
                try:
                    await producer.send_and_wait(name, b"x")
                except UnknownTopicOrPartitionError as e:
                    return type(e).__name__, seen.get(name, float("inf")) - started
                return "sent", 0.0

            async with asyncio.timeout(TIMEOUT):
                got = await asyncio.gather(*(one(n) for n in kinds.values()))
            return dict(zip(kinds, got, strict=True))
        finally:
            await producer.stop()

    try:
        outcome = asyncio.run(send_all())
    finally:
        logger.removeHandler(handler)
    assert set(seen) == set(kinds.values())  # every name's Metadata answer carried INVALID_TOPIC_EXCEPTION
    assert all(t == "UnknownTopicOrPartitionError" for t, _s in outcome.values()), outcome  # after its loop
    print("aiokafka seconds to the first answer with 17:", {k: round(s, 3) for k, (_t, s) in outcome.items()})
    assert _created(bootstrap, kinds) == []


def test_create_topics_answers_17(names: tuple[str, dict[str, str]]) -> None:
    bootstrap, kinds = names
    admin = AdminClient({"bootstrap.servers": bootstrap})
    sendable = {k: n for k, n in kinds.items() if n}  # confluent-kafka refuses an empty name itself
    futures = admin.create_topics([NewTopic(n, 1, 1) for n in sendable.values()], request_timeout=30)
    for kind, name in sendable.items():
        with pytest.raises(Exception) as refused:
            futures[name].result(60)
        assert refused.value.args[0].code() == INVALID_TOPIC, (kind, refused.value)
    assert _created(bootstrap, kinds) == []
