"""ApiVersions (18): the supported ranges, derived from the handler table."""

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


def _ranges(version_cls: Any) -> tuple[Any, ...]:
    from brokers.handlers.registry import HANDLERS  # the table imports this module

    return tuple(
        version_cls(api_key=i16(s.api_key), min_version=i16(s.advertised_min_version), max_version=i16(s.max_version))
        for s in sorted(HANDLERS.values(), key=lambda s: s.api_key)
    )


async def handle(ctx: RequestContext, request: Any) -> Any:
    mod = response_module(API_KEY, ctx.api_version)
    return make(
        mod.ApiVersionsResponse,
        error_code=ErrorCode.none,
        api_keys=_ranges(mod.ApiVersion),
        throttle_time=NO_THROTTLE,
    )


def unsupported_version_body() -> bytes:
    """The v0-format UNSUPPORTED_VERSION answer with our ranges, as KIP-511 asks of a broker."""
    body = v0.ApiVersionsResponse(error_code=ErrorCode.unsupported_version, api_keys=_ranges(v0.ApiVersion))
    buf = io.BytesIO()
    entity_writer(v0.ApiVersionsResponse)(buf, body)
    return buf.getvalue()
