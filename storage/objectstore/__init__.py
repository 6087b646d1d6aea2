"""Object stores for sealed segments: the ObjectStore seam, its obstore backends and a URL factory.

URLs understood by :func:`open_object_store`:

* ``file:///abs/dir`` or a plain path: a local directory (created if missing).
* ``memory://``: a fresh in-process store.
* ``s3://bucket[/prefix][?param=value&...]`` with optional parameters ``endpoint``, ``region``,
  ``access_key_id``, ``secret_access_key``, ``session_token``, ``virtual_hosted_style_request``
  (true/false), ``connect_timeout``, ``request_timeout``, ``retry_timeout`` (durations: ``250ms``,
  ``2s``, ``5m`` or plain seconds), ``max_retries``, ``multipart_threshold`` (bytes; create-only puts
  this large are multipart, default 128 MiB), ``profile`` (a named AWS profile, read with boto3) and
  ``s3_express`` (true/false: S3 Express One Zone). Credentials not in the URL come from the standard AWS
  chain: environment, web identity (IRSA), container, instance role (see :class:`S3ObjectStore`).

:func:`with_s3_options` folds the ``--s3-region`` / ``--s3-endpoint`` command-line options into a URL.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from storage.objectstore.api import (
    ObjectExists,
    ObjectMeta,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
)
from storage.objectstore.local import LocalObjectStore
from storage.objectstore.obstore_store import MemoryObjectStore, ObstoreObjectStore
from storage.objectstore.s3 import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_TIMEOUT,
    S3ObjectStore,
)

__all__ = [
    "LocalObjectStore",
    "MemoryObjectStore",
    "ObjectExists",
    "ObjectMeta",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
    "ObstoreObjectStore",
    "S3ObjectStore",
    "open_object_store",
    "with_s3_options",
]

_S3_PARAMS = frozenset(
    {
        "endpoint",
        "region",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "virtual_hosted_style_request",
        "connect_timeout",
        "request_timeout",
        "retry_timeout",
        "max_retries",
        "multipart_threshold",
        "profile",
        "s3_express",
    }
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def open_object_store(url: str) -> ObjectStore:
    """Open the object store that ``url`` names (see the module docstring for the forms)."""
    if "://" not in url:
        if not url:
            raise ValueError("empty object store URL")
        return LocalObjectStore(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query:
            raise ValueError(f"file URLs look like file:///abs/dir, got {url!r}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file URL needs an absolute path: {url!r}")
        return LocalObjectStore(Path(path))
    if scheme == "memory":
        if parts.netloc or parts.path.strip("/") or parts.query:
            raise ValueError(f"memory URLs take no name or parameters: {url!r}")
        return MemoryObjectStore()
    if scheme == "s3":
        return _open_s3(url)
    raise ValueError(f"unknown object store URL scheme {parts.scheme!r} in {url!r} (file, memory, s3)")


def _open_s3(url: str) -> S3ObjectStore:
    parts = urlsplit(url)
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"s3 URL needs a bucket: {url!r}")
    params: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)).items():
        if name not in _S3_PARAMS:
            raise ValueError(f"unknown s3 URL parameter {name!r} (known: {', '.join(sorted(_S3_PARAMS))})")
        if len(values) != 1:
            raise ValueError(f"s3 URL parameter {name!r} given {len(values)} times")
        params[name] = values[0]
    return S3ObjectStore(
        bucket,
        prefix=unquote(parts.path).strip("/"),
        endpoint=params.get("endpoint"),
        region=params.get("region"),
        access_key_id=params.get("access_key_id"),
        secret_access_key=params.get("secret_access_key"),
        session_token=params.get("session_token"),
        virtual_hosted_style=_boolean("virtual_hosted_style_request", params.get("virtual_hosted_style_request")),
        connect_timeout=_duration(params, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        request_timeout=_duration(params, "request_timeout", DEFAULT_REQUEST_TIMEOUT),
        retry_timeout=_duration(params, "retry_timeout", DEFAULT_RETRY_TIMEOUT),
        max_retries=_count("max_retries", params.get("max_retries"), default=DEFAULT_MAX_RETRIES),
        multipart_threshold=_count(
            "multipart_threshold", params.get("multipart_threshold"), default=DEFAULT_MULTIPART_THRESHOLD
        ),
        profile=params.get("profile") or None,
        s3_express=_boolean("s3_express", params.get("s3_express")),
    )


def with_s3_options(url: str, *, region: str | None = None, endpoint: str | None = None) -> str:
    """``url`` with the command line's ``--s3-region`` / ``--s3-endpoint`` added as URL parameters.

    They are for ``s3://`` URLs only, and may not contradict a parameter already in the URL (ValueError),
    so one setting never silently wins over another.
    """
    options = {name: value for name, value in (("region", region), ("endpoint", endpoint)) if value}
    if not options:
        return url
    if urlsplit(url).scheme.lower() != "s3":
        given = ", ".join(f"--s3-{name}" for name in options)
        raise ValueError(f"{given} needs an s3:// object store URL, got {url or 'the default (a directory)'!r}")
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"--s3-endpoint {endpoint!r} must be an http:// or https:// URL")
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    for name, value in options.items():
        if name in query and query[name] != [value]:
            raise ValueError(f"--s3-{name} {value!r} contradicts {name}={query[name][0]!r} in the URL {url!r}")
    added = "&".join(f"{name}={quote(value, safe=':/')}" for name, value in options.items() if name not in query)
    if not added:
        return url
    return f"{url}{'&' if '?' in url else '?'}{added}"


def _duration(params: dict[str, str], name: str, default: timedelta) -> timedelta:
    text = params.get(name)
    if text is None:
        return default
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"s3 URL parameter {name}={text!r} is not a duration such as 250ms, 2s or 5m")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _boolean(name: str, text: str | None) -> bool:
    if text is None:
        return False
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"s3 URL parameter {name}={text!r} is not true or false")


def _count(name: str, text: str | None, *, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit():
        raise ValueError(f"s3 URL parameter {name}={text!r} is not a non-negative integer")
    return int(text)
