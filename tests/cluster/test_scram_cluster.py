"""SCRAM credentials on a dev cluster: a credential written through one broker is seen by the others at once
(they read the metadata store at every authentication and every DescribeUserScramCredentials)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from brokers.cli.client import Connection
from brokers.devcluster import DevCluster
from brokers.handlers.base import make
from brokers.security.scram import MECHANISM_IDS, salted_password
from tests.etcd_server import etcd_available

from .harness import assert_no_tracebacks, print_logs

pytestmark = [
    pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed (make system-deps)"),
    pytest.mark.slow,  # a cluster of its own; tests/e2e/test_security_*.py cover the protocol on tidelog run
]


async def _alter(address: str, user: str) -> ErrorCode:
    host, port = address.rsplit(":", 1)
    conn = await Connection.open(host, int(port), request_timeout=30)
    try:
        mod = conn.module(51, 0, 0)
        salt = secrets.token_bytes(16)
        upsert = make(mod.ScramCredentialUpsertion, name=user, mechanism=MECHANISM_IDS["SCRAM-SHA-256"],
                      iterations=4096, salt=salt, salted_password=salted_password("SCRAM-SHA-256", "pw", salt, 4096))
        resp = await conn.send(make(mod.AlterUserScramCredentialsRequest, deletions=(), upsertions=(upsert,)))
        return ErrorCode(resp.results[0].error_code)
    finally:
        await conn.close()


async def _describe(address: str, user: str) -> list[tuple[int, int]]:
    host, port = address.rsplit(":", 1)
    conn = await Connection.open(host, int(port), request_timeout=30)
    try:
        mod = conn.module(50, 0, 0)
        resp = await conn.send(make(mod.DescribeUserScramCredentialsRequest, users=(make(mod.UserName, name=user),)))
        result = resp.results[0]
        assert result.error_code == ErrorCode.none, result
        return [(int(c.mechanism), int(c.iterations)) for c in result.credential_infos]
    finally:
        await conn.close()


def test_credential_written_on_one_broker_is_seen_by_another(tmp_path: Path) -> None:
    dev = DevCluster(tmp_path / "scram-cluster", brokers=2, bookies=3)
    dev.start()
    try:
        assert asyncio.run(_alter(dev.broker(1).address, "dora")) == ErrorCode.none
        assert asyncio.run(_describe(dev.broker(2).address, "dora")) == [(MECHANISM_IDS["SCRAM-SHA-256"], 4096)]
    except BaseException:
        print_logs(dev)
        raise
    finally:
        dev.stop()
    assert_no_tracebacks(dev)
