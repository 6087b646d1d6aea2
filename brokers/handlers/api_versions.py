"""ApiVersions (18): the supported ranges, derived from the handler table, and the features (KIP-584).

From v3 the answer also carries feature flags, which Kafka's admin ``describeFeatures`` (``kafka-features
describe``, kafka-python ``describe_features``) and some clients read: ``group.version`` 1 is finalized, because
KIP-848 consumer groups are served (ConsumerGroupHeartbeat, ConsumerGroupDescribe). ``transaction.version`` is
finalized at the broker setting of that name (default 2: KIP-890 part 2, which Kafka 4's Java producer then uses:
EndTxn v5 bumping the epoch per transaction, Produce v12 / TxnOffsetCommit v5 whose partitions the leader adds
implicitly); at 0 it is not listed, and such clients keep to the part-1 protocol. ``metadata.version`` is not
listed: it names a KRaft metadata log that Tidelog does not keep. As Kafka does, v3 answers
leave out supported features whose minimum is 0 (older clients reject them); finalized ones are always listed.
"""

from __future__ import annotations

import io
from typing import Any

from kio.schema.api_versions.v0 import response as v0
from kio.schema.errors import ErrorCode
from kio.serial import entity_writer
from kio.static.primitive import i16

from brokers.handlers.base import NO_THROTTLE, RequestContext, make, response_module

API_KEY = 18
MIN_VERSION = 0
MAX_VERSION = 4
SUPPORTED_FEATURES = {"group.version": (0, 1), "transaction.version": (0, 2)}
"""Feature name -> (min, max) version this broker supports."""
FINALIZED_FEATURES = {"group.version": 1}
"""Feature name -> the finalized level (min = max: Tidelog's levels are fixed, not changed by UpdateFeatures);
``transaction.version`` is added from the broker's setting (``finalized``)."""
FEATURES_EPOCH = 0
"""The finalized features' epoch: they never change, so it never moves (-1 would mean "unknown")."""


def _ranges(version_cls: Any) -> tuple[Any, ...]:
    from brokers.handlers.registry import HANDLERS  # the table imports this module

    return tuple(
        version_cls(api_key=i16(s.api_key), min_version=i16(s.advertised_min_version), max_version=i16(s.max_version))
        for s in sorted(HANDLERS.values(), key=lambda s: s.api_key)
    )


def finalized(transaction_version: int) -> dict[str, int]:
    """The finalized features of a broker whose ``transaction.version`` setting is ``transaction_version`` (a
    level of 0 is not listed, as Kafka leaves out features finalized at 0)."""
    features = dict(FINALIZED_FEATURES)
    if transaction_version > 0:
        features["transaction.version"] = transaction_version
    return features


def _features(mod: Any, version: int, transaction_version: int) -> dict[str, Any]:
    """The feature fields of a v3+ answer (``make`` drops them for older versions)."""
    cls = getattr(mod, "SupportedFeatureKey", None)
    if cls is None:
        return {}
    supported = tuple(
        cls(name=name, min_version=i16(low), max_version=i16(high))
        for name, (low, high) in sorted(SUPPORTED_FEATURES.items())
        if low > 0 or version >= 4
    )
    levels = tuple(
        mod.FinalizedFeatureKey(name=name, max_version_level=i16(level), min_version_level=i16(level))
        for name, level in sorted(finalized(transaction_version).items())
    )
    return {"supported_features": supported, "finalized_features_epoch": FEATURES_EPOCH,
            "finalized_features": levels}  # fmt: skip


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    return make(
        mod.ApiVersionsResponse,
        error_code=ErrorCode.none,
        api_keys=_ranges(mod.ApiVersion),
        throttle_time=NO_THROTTLE,
        **_features(mod, ctx.api_version, ctx.broker.config.transaction_version),
    )


def unsupported_version_body() -> bytes:
    """The v0-format UNSUPPORTED_VERSION answer with our ranges, as KIP-511 asks of a broker."""
    body = v0.ApiVersionsResponse(error_code=ErrorCode.unsupported_version, api_keys=_ranges(v0.ApiVersion))
    buf = io.BytesIO()
    entity_writer(v0.ApiVersionsResponse)(buf, body)
    return buf.getvalue()
