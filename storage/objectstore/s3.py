"""ObjectStore on any S3 endpoint (AWS, MinIO, moto) through obstore's S3Store.

Create-only puts are real conditional writes: one PUT with ``If-None-Match: *``; the service answers 412
when the key exists (AWS since 2024-08, MinIO, moto 5). A concurrent conditional write to the same key may
get 409 on AWS; that maps to ObjectStoreUnavailable, and the retry then meets ObjectExists.

Create-only puts of ``multipart_threshold`` bytes or more (128 MiB by default; a URL parameter) are
multipart: obstore cannot make a multipart upload conditional, so the bytes go up in parts to a staging key
(``KEY.upload-NONCE``, unique per attempt), then a server-side copy to ``KEY`` that S3 completes only if
``KEY`` does not exist (obstore's ``copy_if_not_exists="multipart"``: UploadPartCopy, then
CompleteMultipartUpload with ``If-None-Match: *``), then the staging key is deleted. A crash leaves a staging
object under the partition's prefix, which orphan GC deletes.

Streamed puts (``put_stream``, how segments are uploaded) of at least 8 MiB take the same staging path
whatever ``multipart_threshold`` says: S3 has no create-only multipart upload that obstore 0.12 can drive
(``mode="create"`` makes obstore buffer the whole stream for one PUT), and a streamed segment must not be
held whole. The cost is one server-side copy per segment (UploadPartCopy), no bytes through the broker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import AlreadyExistsError, PreconditionError
from obstore.store import S3Store

from storage.objectstore.api import ObjectExists, ObjectStoreError, ObjectStoreUnavailable
from storage.objectstore.obstore_store import ChunkStream, ObstoreObjectStore

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3CredentialProvider

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MULTIPART_THRESHOLD",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RETRY_TIMEOUT",
    "S3ObjectStore",
]

DEFAULT_CONNECT_TIMEOUT = timedelta(seconds=5)
DEFAULT_REQUEST_TIMEOUT = timedelta(minutes=5)
"""Whole-request limit; generous because a segment is uploaded in one conditional PUT."""
DEFAULT_MAX_RETRIES = 10
DEFAULT_RETRY_TIMEOUT = timedelta(minutes=3)
DEFAULT_MULTIPART_THRESHOLD = 128 * 1024 * 1024
"""Create-only puts this large or larger are multipart (S3 suggests multipart above ~100 MB)."""


class S3ObjectStore(ObstoreObjectStore):
    """Objects in ``bucket`` under ``prefix`` (keys are relative to it; list returns relative keys).

    Credentials not given come from the standard AWS chain, in obstore's order: the environment
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``), a web identity token
    (EKS IRSA: ``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``), the ECS container endpoint, then the EC2
    instance metadata service (instance role). obstore reads no ``~/.aws`` files, so a named ``profile`` (or
    ``AWS_PROFILE`` when no keys are in the environment) goes through boto3's session, which reads them and
    refreshes what they point at (SSO, assume-role); boto3 is then needed (``pip install 'tidelog[aws]'``).
    A plain ``http://`` endpoint is allowed (and only then is HTTP allowed), path-style addressing is the
    default because MinIO and moto need it, and ``s3_express`` turns on S3 Express One Zone (directory
    buckets: session auth, virtual-hosted zonal endpoints).
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
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        profile: str | None = None,
        s3_express: bool = False,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 object store needs a bucket")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        if multipart_threshold < 1:
            raise ValueError(f"multipart_threshold must be at least 1 byte, got {multipart_threshold}")
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._multipart_threshold = multipart_threshold
        config: S3Config = {"virtual_hosted_style_request": virtual_hosted_style, "copy_if_not_exists": "multipart"}
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
        if s3_express:
            config["s3_express"] = True
        provider = _profile_provider(profile, explicit_keys=access_key_id is not None)
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
            credential_provider=provider,
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

    async def _write(self, key: str, data: bytes | memoryview, if_absent: bool) -> None:
        size = len(data) if isinstance(data, bytes) else data.nbytes
        if not if_absent or size < self._multipart_threshold:
            await super()._write(key, data, if_absent)
            return
        staging = f"{key}.upload-{secrets.token_hex(8)}"
        try:
            await super()._write(staging, data, False)  # multipart: an overwrite of at least MULTIPART_THRESHOLD
        except BaseException:
            with contextlib.suppress(ObjectStoreError):
                await self.delete([staging])
            raise
        await self._publish(staging, key)

    async def _write_stream(self, key: str, chunks: ChunkStream, if_absent: bool) -> None:
        """A stream of at least MULTIPART_THRESHOLD bytes: a multipart upload (parts of MULTIPART_PART_SIZE,
        so at most a few parts are in memory); create-only goes to a staging key first, then the
        conditional copy (obstore cannot make the multipart upload itself conditional)."""
        if not if_absent:
            await self._multipart(key, chunks)
            return
        staging = f"{key}.upload-{secrets.token_hex(8)}"
        try:
            await self._multipart(staging, chunks)
        except BaseException:
            with contextlib.suppress(ObjectStoreError):
                await self.delete([staging])
            raise
        await self._publish(staging, key)

    async def _publish(self, staging: str, key: str) -> None:
        """Copy ``staging`` to ``key`` only if ``key`` does not exist; delete ``staging`` either way."""
        try:
            await obstore.copy_async(self._store, staging, key, overwrite=False)
        except (AlreadyExistsError, PreconditionError) as exc:
            raise ObjectExists(key) from exc
        except FileNotFoundError as exc:  # the staging object vanished (orphan GC, a lifecycle rule): retry
            raise ObjectStoreUnavailable(f"{self!r}: put {key!r}: staging object {staging!r} is gone") from exc
        except Exception as exc:
            self._raise(exc, key, "put")
        finally:
            with contextlib.suppress(ObjectStoreError):
                await self.delete([staging])


def _profile_provider(profile: str | None, *, explicit_keys: bool) -> S3CredentialProvider | None:
    """A boto3-session credential provider for a named AWS profile, or None to use obstore's own chain.

    Used when ``profile`` is given, or when ``AWS_PROFILE`` is set and neither the URL nor the environment
    holds keys (the AWS CLI's precedence: explicit keys win over a profile).
    """
    if profile is None:
        env_keys = bool(os.environ.get("AWS_ACCESS_KEY_ID"))
        profile = None if explicit_keys or env_keys else os.environ.get("AWS_PROFILE") or None
    elif explicit_keys:
        raise ValueError("give a profile or access_key_id/secret_access_key, not both")
    if profile is None:
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError as exc:
        raise ValueError(
            f"AWS profile {profile!r} needs boto3 to read ~/.aws/config: pip install 'tidelog[aws]'"
        ) from exc
    try:
        session = boto3.Session(profile_name=profile)
    except Exception as exc:  # botocore's ProfileNotFound and config parse errors
        raise ValueError(f"AWS profile {profile!r}: {exc}") from exc
    provider: S3CredentialProvider = Boto3CredentialProvider(session)
    return provider
