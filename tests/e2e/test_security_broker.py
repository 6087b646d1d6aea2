"""The broker side of security, over real sockets: SASL state (requests before authentication close the
connection), KIP-368 session lifetime and expiry, Metadata per listener, SCRAM credential APIs and their
errors, `tidelog users`, certificate hot reload, and listener configs refused at start."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
from kio.schema.errors import ErrorCode

from brokers.cli.client import ClientError, Connection
from brokers.handlers.base import make

from .broker_process import tidelog_command
from .security_fixtures import PASSWORD, USER, SecureBroker, make_certs, start_secure_broker

SASL_HANDSHAKE, SASL_AUTHENTICATE, METADATA = 17, 36, 3


async def _plain_login(conn: Connection, user: str = USER, password: str = PASSWORD) -> object:
    hs = conn.module(SASL_HANDSHAKE, 1, 1)
    resp = await conn.send(make(hs.SaslHandshakeRequest, mechanism="PLAIN"))
    assert resp.error_code == ErrorCode.none and "PLAIN" in resp.mechanisms
    auth = conn.module(SASL_AUTHENTICATE, 1, 1)
    return await conn.send(make(auth.SaslAuthenticateRequest, auth_bytes=f"\0{user}\0{password}".encode()))


async def _metadata(conn: Connection) -> object:
    mod = conn.module(METADATA, 1, 1)
    return await conn.send(make(mod.MetadataRequest, topics=()))


def test_requests_before_authentication_close_the_connection(secure_broker: SecureBroker) -> None:
    async def run() -> None:
        conn = await Connection.open("127.0.0.1", secure_broker.sasl_plaintext, request_timeout=10)
        try:
            with pytest.raises(ClientError):
                await _metadata(conn)
            assert conn.closed
        finally:
            await conn.close()

    asyncio.run(run())


def test_authenticated_metadata_advertises_the_listener(secure_broker: SecureBroker) -> None:
    async def run() -> None:
        conn = await Connection.open("127.0.0.1", secure_broker.sasl_plaintext, request_timeout=10)
        try:
            resp = await _plain_login(conn)
            assert resp.error_code == ErrorCode.none  # type: ignore[attr-defined]
            assert resp.session_lifetime.total_seconds() == 0  # type: ignore[attr-defined]  # no reauth configured
            meta = await _metadata(conn)
            assert [(b.host, b.port) for b in meta.brokers] == [  # type: ignore[attr-defined]
                ("127.0.0.1", secure_broker.sasl_plaintext)
            ]
        finally:
            await conn.close()

    asyncio.run(run())


def test_failed_authentication_is_answered_then_closed(secure_broker: SecureBroker) -> None:
    async def run() -> None:
        conn = await Connection.open("127.0.0.1", secure_broker.sasl_plaintext, request_timeout=10)
        try:
            resp = await _plain_login(conn, password="wrong")  # noqa: S106 - a wrong password on purpose
            assert resp.error_code == ErrorCode.sasl_authentication_failed  # type: ignore[attr-defined]
            assert "Invalid username or password" in resp.error_message  # type: ignore[attr-defined]
            with pytest.raises(ClientError):
                await _metadata(conn)
        finally:
            await conn.close()

    asyncio.run(run())


def test_scram_credential_errors(secure_broker: SecureBroker) -> None:
    admin = AdminClient({"bootstrap.servers": secure_broker.broker.bootstrap})
    with pytest.raises(KafkaException, match=r"RESOURCE_NOT_FOUND|does not exist"):
        admin.describe_user_scram_credentials(["nobody"])["nobody"].result(timeout=30)
    few = UserScramCredentialUpsertion("bob", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 10), b"pw")
    with pytest.raises(KafkaException, match=r"UNACCEPTABLE_CREDENTIAL|Too few iterations"):
        admin.alter_user_scram_credentials([few])["bob"].result(timeout=30)
    described = admin.describe_user_scram_credentials([USER])[USER].result(timeout=30)
    infos = {i.mechanism: i.iterations for i in described.scram_credential_infos}
    assert infos == {ScramMechanism.SCRAM_SHA_256: 4096, ScramMechanism.SCRAM_SHA_512: 4096}


def _users(bootstrap: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*tidelog_command(), "users", *args, "--bootstrap", bootstrap], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_users_cli(secure_broker: SecureBroker) -> None:
    bootstrap = secure_broker.broker.bootstrap
    name = f"carol-{uuid.uuid4().hex[:6]}"
    made = _users(bootstrap, "create", name, "--password-stdin", "--mechanism", "SCRAM-SHA-256", stdin="c-pass\n")
    assert made.returncode == 0, made.stderr
    listed = _users(bootstrap, "list")
    assert f"{name}  SCRAM-SHA-256 (4096)" in listed.stdout

    async def login(password: str) -> ErrorCode:
        conn = await Connection.open("127.0.0.1", secure_broker.sasl_plaintext, request_timeout=10)
        try:
            return (await _plain_login(conn, name, password)).error_code  # type: ignore[attr-defined, no-any-return]
        finally:
            await conn.close()

    assert asyncio.run(login("c-pass")) == ErrorCode.none
    gone = _users(bootstrap, "delete", name)
    assert gone.returncode == 0, gone.stderr
    assert asyncio.run(login("c-pass")) == ErrorCode.sasl_authentication_failed
    again = _users(bootstrap, "delete", name)
    assert again.returncode == 1 and "RESOURCE_NOT_FOUND" in again.stderr
    bad = _users(bootstrap, "create", name)
    assert bad.returncode == 2 and "--password-stdin" in bad.stderr


def test_session_expiry_closes_and_reauthentication_extends(tmp_path: Path) -> None:
    sb = start_secure_broker(tmp_path, reauth_ms=1500)
    try:
        from .security_fixtures import create_user

        create_user(sb.broker.bootstrap)

        async def run() -> None:
            conn = await Connection.open("127.0.0.1", sb.sasl_plaintext, request_timeout=10)
            try:
                resp = await _plain_login(conn)
                assert resp.session_lifetime.total_seconds() == 1.5  # type: ignore[attr-defined]
                await asyncio.sleep(1.0)
                again = await _plain_login(conn)  # KIP-368 re-authentication on the same connection
                assert again.error_code == ErrorCode.none  # type: ignore[attr-defined]
                await asyncio.sleep(1.0)  # 2 s after the first login: alive thanks to the re-authentication
                await _metadata(conn)
                await asyncio.sleep(1.0)  # now past the second session
                with pytest.raises(ClientError):
                    await _metadata(conn)
            finally:
                await conn.close()

        asyncio.run(run())
    finally:
        sb.broker.close()


def _server_cn(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cert = tls.getpeercert()
    assert cert is not None
    return dict(item[0] for item in cert["subject"])["commonName"]


def test_certificate_hot_reload(secure_broker: SecureBroker, tmp_path: Path) -> None:
    certs = secure_broker.certs
    assert _server_cn(secure_broker.sasl_ssl, certs.ca) == "broker"
    fresh = make_certs(tmp_path / "new", server_cn="broker-renewed")  # a new CA too: trust both
    original = certs.keystore.read_bytes()
    try:
        tmp = certs.keystore.with_suffix(".tmp")
        tmp.write_bytes(fresh.keystore.read_bytes())
        os.replace(tmp, certs.keystore)  # atomic, as certificate managers do
        deadline = time.monotonic() + 15
        cn = ""
        while time.monotonic() < deadline:
            try:
                cn = _server_cn(secure_broker.sasl_ssl, fresh.ca)
                break
            except ssl.SSLError:
                time.sleep(0.2)
        assert cn == "broker-renewed"
    finally:
        certs.keystore.write_bytes(original)


@pytest.mark.parametrize(("configs", "message"), [
    (["listeners=FOO://127.0.0.1:0"], "listener FOO has no security protocol"),
    (["listeners=SSL://127.0.0.1:0"], "needs ssl.keystore.location"),
    (["listeners=PLAINTEXT://127.0.0.1:0", "advertised.listeners=SSL://h:1"], "not in listeners"),
    (["sasl.enabled.mechanisms=GSSAPI"], "GSSAPI not supported"),
    (["listeners=PLAINTEXT://127.0.0.1:1,PLAINTEXT://127.0.0.1:2"], "appears twice"),
    (["listeners=PLAINTEXT:/127.0.0.1:1"], "is not NAME://HOST:PORT"),
])
def test_bad_listener_configs_refused_at_start(tmp_path: Path, configs: list[str], message: str) -> None:
    cmd = [*tidelog_command(), "run", "--data-dir", str(tmp_path / "d")]
    for c in configs:
        cmd += ["--config", c]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
