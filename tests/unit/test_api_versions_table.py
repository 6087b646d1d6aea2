"""ApiVersions advertises exactly what the handlers serve, for every version.

The ranges in the ApiVersions answer are derived from the handler table (brokers/handlers/registry.py), so
these tests check the other direction: that every advertised version is really served. For every API key
and every version in its range, kio has the request and the response schema (the server can decode the
request and the handler can build the answer), and the handler, run in-process on a real Broker (in-memory
metadata, ledgers and object store), answers three sample requests of that version (tests/request_samples.py:
minimal, every field filled, every nullable field null) with a response of exactly that version that kio
encodes and decodes back. The only versions advertised but not handled are Produce v0-v2 (KAFKA-18659:
listed for librdkafka, closed on arrival, as Kafka 4 does).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kio.index import load_payload_module, load_request_schema
from kio.serial import entity_reader
from kio.static.constants import EntityType

from brokers.broker import Broker
from brokers.config import BrokerConfig
from brokers.handlers import api_versions
from brokers.handlers.base import RequestContext
from brokers.handlers.registry import API_MODULES, HANDLERS, MODULES
from brokers.server import encode_body
from metadata.embedded import EmbeddedMetadataStore
from storage.objectstore import MemoryObjectStore
from tests.memory_ledgers import MemoryLedgerClient
from tests.request_samples import SAMPLE_TOPIC, build_entity, with_nulls

pytestmark = pytest.mark.asyncio
HANDLED = [(key, v) for key, spec in sorted(HANDLERS.items()) for v in range(spec.min_version, spec.max_version + 1)]
ANSWER_TIMEOUT_S = 30.0  # a hang guard (long polls in the samples are 100 ms), never a timing assertion


@pytest_asyncio.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    store = await EmbeddedMetadataStore.open(None)
    config = BrokerConfig(node_id=1, data_dir=str(tmp_path), group_initial_rebalance_delay_ms=0)
    b = Broker(config, store, MemoryLedgerClient(), MemoryObjectStore())
    await b.start()
    await b.topics.create(SAMPLE_TOPIC, 2, 1, {})
    try:
        yield b
    finally:
        await b.stop()
        await store.close()


def _response_class(api_key: int, version: int) -> Any:
    mod = load_payload_module(api_key, version, EntityType.response)
    (cls,) = [v for v in vars(mod).values() if getattr(v, "__type__", None) == EntityType.response]
    return cls


def _round_trip(cls: Any, response: Any) -> Any:
    """What a client reads: the response as the server encodes it (or the handler's own bytes), decoded as
    ``cls``."""
    if isinstance(response, bytes):
        body = response
    else:
        assert type(response) is cls, f"{type(response).__module__}.{type(response).__name__} is not {cls}"
        body = encode_body(response)
    decoded, used = entity_reader(cls)(body, 0)
    assert used == len(body)
    return decoded


async def test_api_versions_lists_the_handler_table_in_every_version(broker: Broker) -> None:
    assert {m.API_KEY for m in MODULES} == set(HANDLERS) and len(MODULES) == len(API_MODULES)
    expected = {key: (spec.advertised_min_version, spec.max_version) for key, spec in HANDLERS.items()}
    for version in range(api_versions.MIN_VERSION, api_versions.MAX_VERSION + 1):
        request_cls = load_request_schema(api_versions.API_KEY, version)
        request = build_entity(request_cls, full=False)
        ctx = RequestContext(broker, api_versions.API_KEY, version, 1, "test", "127.0.0.1:1")
        decoded = _round_trip(_response_class(api_versions.API_KEY, version), await api_versions.handle(ctx, request))
        advertised = {int(k.api_key): (int(k.min_version), int(k.max_version)) for k in decoded.api_keys}
        assert advertised == expected, f"ApiVersions v{version}"
        if version >= 3:  # KIP-584 features: KIP-848 groups are served, so group.version 1 is finalized;
            # transaction.version at the broker's setting (default 2: KIP-890 part 2)
            finalized = {f.name: (f.min_version_level, f.max_version_level) for f in decoded.finalized_features}
            supported = {f.name: (f.min_version, f.max_version) for f in decoded.supported_features}
            assert (decoded.finalized_features_epoch, finalized) == (
                0, {"group.version": (1, 1), "transaction.version": (2, 2)}
            )
            assert supported == (  # v3: no minimum-0 features
                {"group.version": (0, 1), "transaction.version": (0, 2)} if version >= 4 else {}
            )
    below = {key for key, spec in HANDLERS.items() if spec.advertised_min_version < spec.min_version}
    assert below == {0}  # Produce v0-v2 only (KAFKA-18659)
    assert all(spec.advertised_min_version <= spec.min_version <= spec.max_version for spec in HANDLERS.values())


async def test_every_handled_version_has_kio_schemas() -> None:
    for api_key, version in HANDLED:
        load_request_schema(api_key, version)
        _response_class(api_key, version)


async def test_every_handled_version_is_answered_in_that_version(broker: Broker) -> None:
    failures: list[str] = []
    answered = 0
    for api_key, version in HANDLED:
        spec = HANDLERS[api_key]
        request_cls = load_request_schema(api_key, version)
        response_cls = _response_class(api_key, version)
        full = build_entity(request_cls, full=True)
        for label, request in (("minimal", build_entity(request_cls, full=False)), ("full", full),
                               ("nulls", with_nulls(full))):  # fmt: skip
            ctx = RequestContext(broker, api_key, version, 1, "test", "127.0.0.1:1")
            try:
                response = await asyncio.wait_for(spec.handle(ctx, request), ANSWER_TIMEOUT_S)
                if response is None:  # Produce acks=0 only; the samples ask for acks
                    raise AssertionError("no response")
                _round_trip(response_cls, response)
                answered += 1
            except Exception as e:  # collected: one run names every version that fails
                failures.append(f"API {api_key} v{version} {label}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)
    assert answered == 3 * len(HANDLED)
