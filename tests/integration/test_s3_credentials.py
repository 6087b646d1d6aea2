"""The S3 object store's cloud options against a real moto S3 server: credentials from the standard AWS chain
(environment, a named profile through boto3, the instance metadata service), ``--s3-region`` /
``--s3-endpoint``, HTTP allowed only for ``http://`` endpoints, S3 Express One Zone, and create-only puts as
S3 conditional writes (``If-None-Match: *``: a second create of a key fails and leaves the first object).

moto does not check signatures, so a put succeeding shows the request was made; which credentials were used
is shown by what the credential source served (the fake instance-metadata server counts its answers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from storage.objectstore import ObjectExists, S3ObjectStore, open_object_store, with_s3_options
from tests.moto_server import MotoServer

BUCKET = "tidelog-cloud"
AWS_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_METADATA_ENDPOINT",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP",
)  # fmt: skip


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credential source of the machine running the tests leaks in (and no ~/.aws files are read)."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")  # no instance role unless a test serves one


async def round_trip(store: S3ObjectStore, key: str) -> None:
    try:
        await store.put(key, b"payload")
        assert await store.get(key) == b"payload"
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_credentials_from_the_environment(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    store = open_object_store(f"s3://{BUCKET}/env?endpoint={moto.endpoint}")
    assert isinstance(store, S3ObjectStore)
    await round_trip(store, "from-env")


@pytest.mark.asyncio
async def test_credentials_from_a_named_profile(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[tidelog-test]\naws_access_key_id = profile-key\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    for key, url in (("named", f"s3://{BUCKET}/profile?endpoint={moto.endpoint}&profile=tidelog-test"), ("env", None)):
        if url is None:  # AWS_PROFILE, as the AWS CLI reads it, when no keys are in the environment
            monkeypatch.setenv("AWS_PROFILE", "tidelog-test")
            url = f"s3://{BUCKET}/profile?endpoint={moto.endpoint}"
        store = open_object_store(url)
        assert isinstance(store, S3ObjectStore)
        provider = store._store.credential_provider  # the boto3 session's view of the profile
        assert provider is not None
        assert provider()["access_key_id"] == "profile-key"
        await round_trip(store, key)


def test_an_unknown_profile_is_a_clear_error(moto: MotoServer) -> None:
    with pytest.raises(ValueError, match="AWS profile 'nope'"):
        open_object_store(f"s3://{BUCKET}?endpoint={moto.endpoint}&profile=nope")
    with pytest.raises(ValueError, match="not both"):
        open_object_store(f"s3://{BUCKET}?profile=p&access_key_id=a&secret_access_key=b")


class FakeInstanceMetadata(BaseHTTPRequestHandler):
    """EC2's IMDSv2, as much as a credential chain uses: a session token, the role name, the role's keys."""

    served: list[str] = []

    def do_PUT(self) -> None:
        self._answer("imds-token" if self.path == "/latest/api/token" else None)

    def do_GET(self) -> None:
        role_path = "/latest/meta-data/iam/security-credentials/"
        if self.headers.get("X-aws-ec2-metadata-token") != "imds-token":
            self._answer(None, status=401)
        elif self.path == role_path:
            self._answer("tidelog-broker-role")
        elif self.path == role_path + "tidelog-broker-role":
            type(self).served.append(self.path)
            self._answer(json.dumps({
                "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "instance-key", "SecretAccessKey": "s",
                "Token": "instance-session", "Expiration": "2099-01-01T00:00:00Z",
                "LastUpdated": "2026-01-01T00:00:00Z",
            }))  # fmt: skip
        else:
            self._answer(None)

    def _answer(self, body: str | None, status: int = 200) -> None:
        payload = (body or "").encode()
        self.send_response(status if body is not None or status != 200 else 404)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.mark.asyncio
async def test_credentials_from_the_instance_role(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeInstanceMetadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_METADATA_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        FakeInstanceMetadata.served.clear()
        store = open_object_store(f"s3://{BUCKET}/instance?endpoint={moto.endpoint}")
        assert isinstance(store, S3ObjectStore)
        await round_trip(store, "from-instance-role")
        assert FakeInstanceMetadata.served, "the put did not take the instance role's credentials"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.asyncio
async def test_s3_region_and_endpoint_options(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    url = with_s3_options(f"s3://{BUCKET}/opts", region="eu-west-1", endpoint=moto.endpoint)
    store = open_object_store(url)
    assert isinstance(store, S3ObjectStore)
    assert store._store.config["region"] == "eu-west-1"
    assert store._store.client_options["allow_http"] in (True, "true")  # an http:// endpoint, so HTTP is allowed
    await round_trip(store, "with-options")
    assert with_s3_options("s3://b?region=us-east-1", region="us-east-1") == "s3://b?region=us-east-1"
    with pytest.raises(ValueError, match="contradicts"):
        with_s3_options("s3://b?region=us-east-1", region="eu-west-1")
    with pytest.raises(ValueError, match="needs an s3:// object store URL"):
        with_s3_options("", region="eu-west-1")
    with pytest.raises(ValueError, match="http:// or https://"):
        with_s3_options("s3://b", endpoint="minio:9000")


def test_https_endpoints_and_aws_never_allow_http() -> None:
    for url in ("s3://b?endpoint=https://s3.example.com", "s3://b?region=eu-west-1"):
        store = open_object_store(url)
        assert isinstance(store, S3ObjectStore)
        assert store._store.client_options["allow_http"] in (False, "false"), url


def test_s3_express_one_zone_is_passed_to_obstore() -> None:
    store = open_object_store("s3://tidelog--use1-az4--x-s3?region=us-east-1&s3_express=true")
    assert isinstance(store, S3ObjectStore)
    assert store._store.config["s3_express"] in (True, "true")


@pytest.mark.asyncio
async def test_create_only_put_is_a_conditional_write(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    store = open_object_store(f"s3://{BUCKET}/conditional?endpoint={moto.endpoint}")
    assert isinstance(store, S3ObjectStore)
    try:
        await store.put("segment", b"first")  # if_absent=True: PUT with If-None-Match: *
        with pytest.raises(ObjectExists):
            await store.put("segment", b"second")
        assert await store.get("segment") == b"first"  # S3 refused the second write (412), nothing overwritten
    finally:
        await store.close()


def test_run_and_broker_take_the_s3_flags() -> None:
    """``tidelog run`` / ``tidelog broker`` fold --s3-region / --s3-endpoint into the URL, or refuse (exit 2)."""
    import argparse

    from brokers.cli import broker, run
    from brokers.config import ConfigError

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    run.add_parser(sub)
    broker.add_parser(sub)
    args = parser.parse_args(
        ["run", "--object-store", "s3://b/p", "--s3-region", "eu-west-1", "--s3-endpoint", "http://minio:9000"]
    )
    assert run.build_config(args).object_store == "s3://b/p?region=eu-west-1&endpoint=http://minio:9000"
    cluster = ["broker", "--metadata", "etcd://etcd:2379", "--listen", "0.0.0.0:9092", "--advertised", "b1:9092"]
    args = parser.parse_args([*cluster, "--object-store", "s3://b", "--s3-region", "eu-west-1"])
    assert broker.build_config(args)[0].object_store == "s3://b?region=eu-west-1"
    with pytest.raises(ConfigError, match="needs an s3:// object store URL"):
        run.build_config(parser.parse_args(["run", "--s3-endpoint", "http://minio:9000"]))
