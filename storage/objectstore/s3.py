"""ObjectStore on any S3 endpoint (AWS, MinIO, moto) through obstore's S3Store.

Create-only puts are real conditional writes: one PUT with ``If-None-Match: *``; the service answers 412
when the key exists (AWS since 2024-08, MinIO, moto 5). A concurrent conditional write to the same key may
get 409 on AWS; that maps to ObjectStoreUnavailable, and the retry then meets ObjectExists.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING

from obstore.store import S3Store

from storage.objectstore.obstore_store import ObstoreObjectStore

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RETRY_TIMEOUT",
    "S3ObjectStore",
]

DEFAULT_CONNECT_TIMEOUT = timedelta(seconds=5)
DEFAULT_REQUEST_TIMEOUT = timedelta(minutes=5)
"""Whole-request limit; generous because a segment is uploaded in one conditional PUT."""
DEFAULT_MAX_RETRIES = 10
DEFAULT_RETRY_TIMEOUT = timedelta(minutes=3)


class S3ObjectStore(ObstoreObjectStore):
    """Objects in ``bucket`` under ``prefix`` (keys are relative to it; list returns relative keys).

    Unset credentials and region come from the standard AWS environment variables (and, failing those,
    the usual instance or container credential sources). A plain ``http://`` endpoint is allowed, and
    path-style addressing is the default because MinIO and moto need it.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        virtual_hosted_style: bool = False,
        connect_timeout: timedelta = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: timedelta = DEFAULT_REQUEST_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_timeout: timedelta = DEFAULT_RETRY_TIMEOUT,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 object store needs a bucket")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        config: S3Config = {"virtual_hosted_style_request": virtual_hosted_style}
        if endpoint is not None:
            config["endpoint"] = endpoint
        if region is not None:
            config["region"] = region
        elif not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
            config["region"] = "us-east-1"
        if access_key_id is not None and secret_access_key is not None:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        if session_token is not None:
            config["session_token"] = session_token
        client: ClientConfig = {
            "allow_http": endpoint is not None and endpoint.startswith("http://"),
            "connect_timeout": connect_timeout,
            "timeout": request_timeout,
        }
        retry: RetryConfig = {"max_retries": max_retries, "retry_timeout": retry_timeout}
        store = S3Store(
            bucket,
            prefix=self._prefix or None,
            config=config,
            client_options=client,
            retry_config=retry,
        )
        where = f"s3://{bucket}/{self._prefix}" + (f" at {endpoint}" if endpoint else "")
        super().__init__(store, description=where)

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket ("" for none), without surrounding slashes."""
        return self._prefix
