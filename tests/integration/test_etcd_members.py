"""One EtcdMetadataStore over the three members of a real etcd cluster outlives the kill -9 of any one:
writes succeed again within seconds, a lease kept alive across the kill still holds its key, and a watch
opened before the kill delivers what is written after it (issue 11: a broker whose etcd member dies must not
lose its lease while a quorum lives).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.devcluster import DevCluster
from metadata.api import EventKind, MetadataError
from metadata.etcd import EtcdMetadataStore, etcd_endpoints, grpc_target
from tests.etcd_server import etcd_available

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd binary not found (make system-deps)")
WAIT = 20.0  # hang guard


@pytest.fixture
def members(tmp_path: Path) -> Iterator[DevCluster]:
    cluster = DevCluster(tmp_path / "c", brokers=0, bookies=1, etcd_members=3)
    try:
        cluster.start_etcd()
        yield cluster
    finally:
        cluster.stop()


def test_endpoint_lists_parse() -> None:
    assert etcd_endpoints("etcd://127.0.0.1:1,localhost:2/") == [("127.0.0.1", 1), ("localhost", 2)]
    assert grpc_target("etcd://127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert grpc_target("etcd://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3") == ("ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1", 3)
    for bad in ("127.0.0.1:2379", "etcd://", "etcd://h:notaport", "zk://h:1"):
        with pytest.raises(ValueError, match="etcd"):
            etcd_endpoints(bad)


async def _put_until_ok(store: EtcdMetadataStore, key: str, value: bytes) -> float:
    """Seconds until a put succeeds (bounded by WAIT)."""
    started = time.monotonic()
    while True:
        try:
            await store.put(key, value)
            return time.monotonic() - started
        except MetadataError:
            if time.monotonic() - started > WAIT:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow  # 35 s; the fast nemesis run kills members of a 3-member etcd under brokers too
@pytest.mark.asyncio
async def test_client_outlives_each_member(members: DevCluster) -> None:
    url = "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in members.etcds)
    store = await EtcdMetadataStore.connect(url)
    try:
        lease = await store.lease(3)
        await store.put("/m/leased", b"x", lease=lease.id)
        watch = store.watch("/m/w/")
        for n, member in enumerate(members.etcds):
            member.kill9()
            took = await _put_until_ok(store, f"/m/w/{n}", str(n).encode())
            event = await asyncio.wait_for(anext(watch), WAIT)
            assert (event.kind, event.key, event.value) == (EventKind.PUT, f"/m/w/{n}", str(n).encode())
            await asyncio.sleep(4)  # longer than the lease ttl: only a working keepalive keeps the key
            assert lease.alive, f"lease lost after {member.name} was killed"
            leased = await store.get("/m/leased")
            assert leased is not None and leased.lease == lease.id
            print(f"{member.name} killed: put ok after {took:.2f} s; lease and watch kept")
            member.start()
            members.wait_etcd_healthy()
    finally:
        await store.close()
