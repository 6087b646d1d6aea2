"""The ObjectStore contract, run against every backend: local directory, memory, S3 (moto over real HTTP).

Every store comes from ``open_object_store(url)``, so the URL factory is exercised too. The S3 store
talks to a moto server subprocess on 127.0.0.1, started once per session and only if an S3 test runs.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from storage.objectstore import (
    LocalObjectStore,
    MemoryObjectStore,
    ObjectExists,
    ObjectMeta,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
    S3ObjectStore,
    open_object_store,
)
from tests.moto_server import MotoServer, free_port

BUCKET = "tidelog-contract"
MIB = 1024 * 1024
BACKENDS = ["local", "memory", "s3", "s3-multipart"]
SMALL_MULTIPART = 6 * MIB  # "s3-multipart": create-only puts from 6 MiB go through the multipart path


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        yield server


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "local":
        return str(tmp_path / "objects")
    if backend == "memory":
        return "memory://"
    server: MotoServer = request.getfixturevalue("moto")
    if backend == "s3-multipart":
        return server.s3_url(BUCKET, f"contract/{uuid.uuid4().hex}", multipart_threshold=str(SMALL_MULTIPART))
    return server.s3_url(BUCKET, f"contract/{uuid.uuid4().hex}")


@pytest_asyncio.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    opened = open_object_store(_url(request.param, request, tmp_path))
    yield opened
    await opened.close()


# -- put / get ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_put_then_get_returns_the_bytes(store: ObjectStore) -> None:
    await store.put("a", b"hello")
    assert await store.get("a") == b"hello"


@pytest.mark.asyncio
async def test_put_accepts_memoryview_slices(store: ObjectStore) -> None:
    await store.put("mv", memoryview(b"xxpayloadyy")[2:9])
    assert await store.get("mv") == b"payload"


@pytest.mark.asyncio
async def test_empty_object(store: ObjectStore) -> None:
    await store.put("empty", b"")
    assert await store.get("empty") == b""
    assert await store.head("empty") == ObjectMeta("empty", 0)


@pytest.mark.asyncio
async def test_create_only_put_conflicts_and_keeps_the_first_object(store: ObjectStore) -> None:
    await store.put("seg", b"first")
    with pytest.raises(ObjectExists):
        await store.put("seg", b"second")
    with pytest.raises(ObjectExists):
        await store.put("seg", b"third", if_absent=True)
    assert await store.get("seg") == b"first"


@pytest.mark.asyncio
async def test_concurrent_create_only_puts_have_exactly_one_winner(store: ObjectStore) -> None:
    payloads = [bytes([i]) * 4096 for i in range(12)]
    results = await asyncio.gather(*(store.put("race", p) for p in payloads), return_exceptions=True)
    winners = [p for p, r in zip(payloads, results, strict=True) if r is None]
    assert len(winners) == 1, results
    assert all(isinstance(r, ObjectExists) for r in results if r is not None), results
    assert await store.get("race") == winners[0]


@pytest.mark.asyncio
async def test_overwrite_when_not_if_absent(store: ObjectStore) -> None:
    await store.put("k", b"old")
    await store.put("k", b"new, and longer", if_absent=False)
    assert await store.get("k") == b"new, and longer"
    await store.put("fresh", b"created", if_absent=False)
    assert await store.get("fresh") == b"created"


@pytest.mark.asyncio
async def test_binary_data_with_every_byte_value(store: ObjectStore) -> None:
    data = bytes(range(256)) * 17 + bytes(reversed(range(256)))
    await store.put("bin", data)
    assert await store.get("bin") == data
    assert await store.get_range("bin", 250, 12) == data[250:262]


@pytest.mark.asyncio
async def test_ten_mib_object_round_trip(store: ObjectStore) -> None:
    data = os.urandom(10 * MIB)
    await store.put("big/created", data)  # create-only: one conditional PUT
    await store.put("big/overwritten", data, if_absent=False)  # >= 8 MiB overwrite: multipart upload
    for key in ("big/created", "big/overwritten"):
        assert await store.get(key) == data
        assert await store.head(key) == ObjectMeta(key, len(data))
    assert await store.get_range("big/overwritten", 8 * MIB - 5, 10) == data[8 * MIB - 5 : 8 * MIB + 5]


@pytest.mark.asyncio
async def test_large_create_only_put_conflicts_keeps_the_first_and_leaves_nothing_else(store: ObjectStore) -> None:
    first, second = os.urandom(10 * MIB), os.urandom(7 * MIB)
    await store.put("large/seg", first)
    with pytest.raises(ObjectExists):
        await store.put("large/seg", second)
    assert await store.get("large/seg") == first
    assert await store.list("large/") == [ObjectMeta("large/seg", len(first))]  # no staging object left


# -- put_stream ---------------------------------------------------------------------------------------


async def _chunks(data: bytes, sizes: list[int], fail: Exception | None = None) -> AsyncIterator[bytes | memoryview]:
    """``data`` in chunks of the given sizes (cycled; memoryview slices and bytes), then ``fail`` if given."""
    view = memoryview(data)
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        piece = view[pos : pos + size]
        yield piece if i % 2 else bytes(piece)
        pos += size
        i += 1
        await asyncio.sleep(0)
    if fail is not None:
        raise fail


class _StreamBroke(Exception):
    pass


@pytest.mark.asyncio
async def test_put_stream_small_and_large_round_trip(store: ObjectStore) -> None:
    small = os.urandom(3000)
    assert await store.put_stream("stream/small", _chunks(small, [1000, 7, 1993])) == len(small)
    large = os.urandom(10 * MIB + 12345)  # over the gathering bound: the multipart / file streaming path
    assert await store.put_stream("stream/large", _chunks(large, [MIB + 17, 300_000, 5])) == len(large)
    assert await store.put_stream("stream/empty", _chunks(b"", [1])) == 0
    assert await store.get("stream/small") == small
    assert await store.get("stream/large") == large
    assert await store.get("stream/empty") == b""
    assert await store.list("stream/") == [
        ObjectMeta("stream/empty", 0), ObjectMeta("stream/large", len(large)), ObjectMeta("stream/small", len(small))
    ]  # no staging object left  # fmt: skip


@pytest.mark.asyncio
async def test_put_stream_is_create_only_and_keeps_the_first_object(store: ObjectStore) -> None:
    first = os.urandom(9 * MIB)
    await store.put_stream("once/seg", _chunks(first, [2 * MIB]))
    for other in (os.urandom(9 * MIB), b"short"):
        with pytest.raises(ObjectExists):
            await store.put_stream("once/seg", _chunks(other, [MIB]))
    assert await store.get("once/seg") == first
    assert [m.key for m in await store.list("once/")] == ["once/seg"]


@pytest.mark.asyncio
async def test_put_stream_that_fails_stores_nothing_and_raises_the_streams_error(store: ObjectStore) -> None:
    for size in (100, 9 * MIB):  # failing before and after the gathering bound
        with pytest.raises(_StreamBroke):
            await store.put_stream("broken/seg", _chunks(os.urandom(size), [MIB], fail=_StreamBroke("bad entry")))
        assert await store.head("broken/seg") is None
        assert await store.list("broken/") == []


# -- get_range ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_range_middle_end_and_past_end(store: ObjectStore) -> None:
    await store.put("r", b"0123456789")
    assert await store.get_range("r", 0, 3) == b"012"
    assert await store.get_range("r", 4, 3) == b"456"
    assert await store.get_range("r", 7, 3) == b"789"
    assert await store.get_range("r", 7, 100) == b"789"
    assert await store.get_range("r", 10, 5) == b""
    assert await store.get_range("r", 50, 5) == b""
    assert await store.get_range("r", 3, 0) == b""


@pytest.mark.asyncio
async def test_get_range_rejects_negative_arguments(store: ObjectStore) -> None:
    await store.put("r", b"abc")
    with pytest.raises(ValueError):
        await store.get_range("r", -1, 2)
    with pytest.raises(ValueError):
        await store.get_range("r", 0, -2)


# -- not found ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_missing_objects(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get("nope")
    with pytest.raises(ObjectNotFound):
        await store.get_range("nope", 0, 10)
    with pytest.raises(ObjectNotFound):
        await store.get_range("nope", 10, 0)
    with pytest.raises(ObjectNotFound):
        await store.get("dir/nope")
    assert await store.head("nope") is None


@pytest.mark.asyncio
async def test_keys_that_are_prefixes_of_objects_or_extend_them_are_missing(store: ObjectStore) -> None:
    await store.put("obj", b"x")
    await store.put("dir/obj", b"y")
    for key in ("obj/under", "dir"):  # under an object; the "directory" of another object
        with pytest.raises(ObjectNotFound):
            await store.get(key)
        with pytest.raises(ObjectNotFound):
            await store.get_range(key, 0, 1)
        assert await store.head(key) is None
    await store.delete(["obj/under", "dir"])
    assert [m.key for m in await store.list("")] == ["dir/obj", "obj"]


# -- head / list --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_head(store: ObjectStore) -> None:
    await store.put("h/obj", b"12345")
    assert await store.head("h/obj") == ObjectMeta("h/obj", 5)
    assert await store.head("h") is None


@pytest.mark.asyncio
async def test_list_is_sorted_and_does_not_leak_neighbours(store: ObjectStore) -> None:
    keys = ["t/1/b", "t/1/a", "t/1/c/deep", "t/10/a", "t/1x", "t/2/a", "u"]
    for key in keys:
        await store.put(key, key.encode())
    assert [m.key for m in await store.list("t/1/")] == ["t/1/a", "t/1/b", "t/1/c/deep"]
    assert [m.key for m in await store.list("t/1")] == ["t/1/a", "t/1/b", "t/1/c/deep", "t/10/a", "t/1x"]
    assert [m.key for m in await store.list("t/1/b")] == ["t/1/b"]
    assert [m.key for m in await store.list("")] == sorted(keys)
    assert await store.list("t/3/") == []
    assert await store.list("nothing") == []
    assert await store.list("t//") == []
    assert await store.list("t/1/a") == [ObjectMeta("t/1/a", len(b"t/1/a"))]


@pytest.mark.asyncio
async def test_list_more_than_one_page(store: ObjectStore) -> None:
    keys = [f"many/{i:05d}" for i in range(1001)]  # S3 pages listings at 1000 keys
    limit = asyncio.Semaphore(16)

    async def put(key: str) -> None:
        async with limit:
            await store.put(key, b"x")

    await asyncio.gather(*(put(key) for key in keys))
    assert [m.key for m in await store.list("many/")] == keys


@pytest.mark.asyncio
async def test_keys_with_slashes(store: ObjectStore) -> None:
    key = "cluster/topics/0f3a/7/00000000000000000042-17.seg"
    await store.put(key, b"segment")
    assert await store.get(key) == b"segment"
    assert await store.head(key) == ObjectMeta(key, 7)
    assert [m.key for m in await store.list("cluster/topics/0f3a/")] == [key]
    assert [m.key for m in await store.list("cluster/topics/0f3a/7/0000")] == [key]


@pytest.mark.asyncio
async def test_invalid_keys_are_rejected_alike_by_every_backend(store: ObjectStore) -> None:
    for bad in ["", "/a", "a/", "a//b", "a/./b", "a/../b", "..", "a#1", "a\nb", "x" * 1025]:
        with pytest.raises(ValueError):
            await store.put(bad, b"v")
        with pytest.raises(ValueError):
            await store.get(bad)
    assert await store.list("") == []


# -- delete -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_delete(store: ObjectStore) -> None:
    for key in ("d/1", "d/2", "d/3", "keep"):
        await store.put(key, b"x")
    await store.delete(["d/1", "d/3"])
    assert [m.key for m in await store.list("")] == ["d/2", "keep"]
    await store.delete(["d/2", "missing", "missing/deeper"])  # missing keys are ignored
    assert [m.key for m in await store.list("")] == ["keep"]
    await store.delete(["never-existed"])
    await store.delete([])
    with pytest.raises(ObjectNotFound):
        await store.get("d/1")
    await store.put("d/1", b"again")  # a deleted key can be created anew
    assert await store.get("d/1") == b"again"


@pytest.mark.asyncio
async def test_closed_store_refuses_work(store: ObjectStore) -> None:
    await store.close()
    with pytest.raises(ObjectStoreError):
        await store.get("a")
    with pytest.raises(ObjectStoreError):
        await store.put("a", b"x")


# -- S3 specifics -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_s3_prefix_isolation(moto: MotoServer) -> None:
    run = uuid.uuid4().hex
    a = open_object_store(moto.s3_url(BUCKET, f"iso-{run}/a"))
    ab = open_object_store(moto.s3_url(BUCKET, f"iso-{run}/ab"))
    await a.put("k", b"from a")
    await ab.put("k", b"from ab")  # same relative key, different prefix: no conflict
    await ab.put("only-ab", b"x")
    assert await a.get("k") == b"from a"
    assert await ab.get("k") == b"from ab"
    assert [m.key for m in await a.list("")] == ["k"]
    assert [m.key for m in await ab.list("")] == ["k", "only-ab"]
    assert await a.head("only-ab") is None
    await a.delete(["k", "only-ab"])
    assert await ab.get("k") == b"from ab"
    assert await ab.get("only-ab") == b"x"
    assert moto.head_object(BUCKET, f"iso-{run}/ab/only-ab") is not None  # prefix applied on the wire
    assert moto.head_object(BUCKET, f"iso-{run}/a/k") is None


@pytest.mark.asyncio
async def test_s3_large_overwrite_is_multipart_and_create_is_one_conditional_put(moto: MotoServer) -> None:
    prefix = f"mp-{uuid.uuid4().hex}"
    store = open_object_store(moto.s3_url(BUCKET, prefix))
    data = os.urandom(10 * MIB)
    await store.put("over", data, if_absent=False)
    await store.put("small", data[: 8 * MIB - 1], if_absent=False)
    await store.put("create", data)
    over = moto.head_object(BUCKET, f"{prefix}/over")
    small = moto.head_object(BUCKET, f"{prefix}/small")
    create = moto.head_object(BUCKET, f"{prefix}/create")
    assert over is not None and small is not None and create is not None
    assert over["etag"].strip('"').endswith("-2")  # 8 MiB + 2 MiB parts
    assert "-" not in small["etag"]
    assert "-" not in create["etag"]  # obstore never splits a create-only put
    with pytest.raises(ObjectExists):
        await store.put("create", b"other")


@pytest.mark.asyncio
async def test_s3_large_create_is_a_multipart_upload_then_a_conditional_copy(moto: MotoServer) -> None:
    prefix = f"mpc-{uuid.uuid4().hex}"
    store = open_object_store(moto.s3_url(BUCKET, prefix, multipart_threshold=str(SMALL_MULTIPART)))
    data = os.urandom(10 * MIB)
    await store.put("create", data)
    await store.put("below", data[: SMALL_MULTIPART - 1])
    create = moto.head_object(BUCKET, f"{prefix}/create")
    below = moto.head_object(BUCKET, f"{prefix}/below")
    assert create is not None and below is not None
    assert "-" in create["etag"]  # completed as a multipart upload (the conditional copy)
    assert "-" not in below["etag"]  # under the threshold: one conditional PUT
    with pytest.raises(ObjectExists):  # the conditional copy refuses; its staging object is deleted anyway
        await store.put("create", os.urandom(7 * MIB))
    assert await store.get("create") == data
    assert [m.key for m in await store.list("")] == ["below", "create"]  # no staging object left
    # Concurrent large creates of one key are not tested: moto checks If-None-Match on concurrent
    # CompleteMultipartUpload calls before either lands (all three of a race "won" here); S3 arbitrates them.
    await store.close()


@pytest.mark.asyncio
async def test_s3_long_put_stream_is_a_multipart_upload_then_a_conditional_copy(moto: MotoServer) -> None:
    prefix = f"mps-{uuid.uuid4().hex}"
    store = open_object_store(moto.s3_url(BUCKET, prefix))  # default multipart_threshold: 128 MiB
    data = os.urandom(10 * MIB)
    await store.put_stream("create", _chunks(data, [MIB]))
    await store.put_stream("short", _chunks(data[: MIB], [MIB // 4]))
    create = moto.head_object(BUCKET, f"{prefix}/create")
    short = moto.head_object(BUCKET, f"{prefix}/short")
    assert create is not None and short is not None
    assert "-" in create["etag"]  # streamed in parts, completed by the conditional copy
    assert "-" not in short["etag"]  # under the gathering bound: one conditional PUT
    assert [m.key for m in await store.list("")] == ["create", "short"]
    await store.close()


@pytest.mark.asyncio
async def test_s3_unreachable_endpoint_is_unavailable() -> None:
    port = free_port()  # nothing listens there
    url = (
        f"s3://{BUCKET}/x?endpoint=http://127.0.0.1:{port}&region=us-east-1"
        "&access_key_id=k&secret_access_key=s&connect_timeout=500ms&request_timeout=2s"
        "&max_retries=0&retry_timeout=1s"
    )
    store = open_object_store(url)
    calls = [
        lambda: store.put("k", b"v"),
        lambda: store.put("k", b"v", if_absent=False),
        lambda: store.get("k"),
        lambda: store.get_range("k", 0, 4),
        lambda: store.head("k"),
        lambda: store.list("a/"),
        lambda: store.delete(["k"]),
    ]
    for call in calls:
        with pytest.raises(ObjectStoreUnavailable):
            await call()


@pytest.mark.asyncio
async def test_s3_missing_bucket_is_an_error_not_not_found(moto: MotoServer) -> None:
    store = open_object_store(moto.s3_url("no-such-bucket-here"))
    with pytest.raises(ObjectStoreError) as raised:
        await store.put("k", b"v")
    assert not isinstance(raised.value, ObjectNotFound | ObjectStoreUnavailable)
    with pytest.raises(ObjectStoreError) as raised:
        await store.list("")
    assert not isinstance(raised.value, ObjectStoreUnavailable)


# -- local specifics ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_local_store_leaves_no_staging_files_and_hides_stray_ones(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objs")
    await store.put("p/seg", b"data")
    with pytest.raises(ObjectExists):
        await store.put("p/seg", b"other")
    await store.put("p/seg", b"newer", if_absent=False)
    assert sorted(p.name for p in (tmp_path / "objs" / "p").iterdir()) == ["seg"]
    (tmp_path / "objs" / "p" / "seg#123456").write_bytes(b"left by a crash")
    assert [m.key for m in await store.list("")] == ["p/seg"]
    assert await store.get("p/seg") == b"newer"


@pytest.mark.asyncio
async def test_local_object_and_directory_of_the_same_name_is_an_error(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("a/b", b"x")
    with pytest.raises(ObjectStoreError) as raised:
        await store.put("a", b"y")
    assert not isinstance(raised.value, ObjectExists)
    await store.put("f", b"file")
    with pytest.raises(ObjectStoreError):
        await store.put("f/g", b"under a file")


@pytest.mark.asyncio
async def test_local_delete_prunes_empty_directories_and_put_recreates_them(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("x/y/z", b"1")
    await store.delete(["x/y/z"])
    assert not (tmp_path / "x").exists()
    await store.put("x/y/z", b"2")
    assert await store.get("x/y/z") == b"2"


# -- the URL factory ----------------------------------------------------------------------------------


def test_factory_url_forms(tmp_path: Path) -> None:
    plain = open_object_store(str(tmp_path / "plain"))
    assert isinstance(plain, LocalObjectStore) and plain.root == tmp_path / "plain"
    assert (tmp_path / "plain").is_dir()
    from_url = open_object_store((tmp_path / "sub dir").as_uri())
    assert isinstance(from_url, LocalObjectStore) and from_url.root == tmp_path / "sub dir"
    assert isinstance(open_object_store("memory://"), MemoryObjectStore)
    s3 = open_object_store("s3://bkt/p/q/?endpoint=http://127.0.0.1:9&access_key_id=a&secret_access_key=b")
    assert isinstance(s3, S3ObjectStore) and (s3.bucket, s3.prefix) == ("bkt", "p/q")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "gs://bucket",
        "memory://name",
        "file://otherhost/x",
        "s3://",
        "s3://bkt?nonsense=1",
        "s3://bkt?connect_timeout=soon",
        "s3://bkt?max_retries=-1",
        "s3://bkt?virtual_hosted_style_request=maybe",
        "s3://bkt?access_key_id=only-half",
        "s3://bkt?multipart_threshold=0",
        "s3://bkt?multipart_threshold=big",
    ],
)
def test_factory_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_object_store(url)
