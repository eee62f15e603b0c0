"""One contract for every storage backend: the filesystem, and S3 over the wire against a real S3-protocol
server running here (moto's server mode), with the same boto3 calls MinIO and AWS receive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from lumiku_common.media import MediaSigner, MediaUrls
from lumiku_common.settings import StorageSettings
from lumiku_common.storage import (
    CHUNK_SIZE,
    FilesystemStorage,
    InvalidKey,
    ObjectNotFound,
    S3Storage,
    Storage,
    storage_from,
)
from lumiku_devtools.testing import s3_server


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


def s3_settings(endpoint: str, bucket: str, **extra: object) -> StorageSettings:
    return StorageSettings(
        storage_backend="s3",
        s3_endpoint_url=endpoint,
        s3_bucket=bucket,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_create_bucket=True,
        **extra,
    )


@pytest.fixture(params=["filesystem", "s3"])
async def storage(request, tmp_path, s3_endpoint) -> AsyncIterator[Storage]:
    if request.param == "filesystem":
        store: Storage = storage_from(StorageSettings(storage_path=str(tmp_path / "objects")))
        assert isinstance(store, FilesystemStorage)
    else:
        store = storage_from(s3_settings(s3_endpoint, f"contract-{id(request)}"))
        assert isinstance(store, S3Storage)
    await store.ensure_ready()
    yield store
    await store.close()


async def keys(store: Storage, prefix: str = "") -> list[str]:
    return [info.key async for info in store.list(prefix)]


async def test_put_read_head_round_trip(storage):
    data = b"\xff\xd8\xff" + bytes(range(256)) * 10
    stored = await storage.put("avatars/u1/a1/original.jpg", data)
    assert stored.size == len(data) and stored.etag.startswith('"') and len(stored.etag) > 2
    assert await storage.read("avatars/u1/a1/original.jpg") == data
    head = await storage.head("avatars/u1/a1/original.jpg")
    assert head is not None and head.size == len(data) and head.etag == stored.etag
    assert head.content_type == "image/jpeg"


async def test_missing_objects(storage):
    assert await storage.head("avatars/u1/none/original.jpg") is None
    with pytest.raises(ObjectNotFound):
        await storage.open("avatars/u1/none/original.jpg")
    await storage.delete(["avatars/u1/none/original.jpg"])  # idempotent


async def test_large_object_streams_in_chunks(storage):
    data = bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 17)
    await storage.put("avatars/u1/big/original.png", data)
    stream = await storage.open("avatars/u1/big/original.png")
    assert stream.info.size == len(data) and stream.info.content_type == "image/png"
    chunks = [chunk async for chunk in stream.chunks]
    assert len(chunks) >= 2 and b"".join(chunks) == data


async def test_overwrite_changes_the_etag(storage):
    first = await storage.put("avatars/u1/a1/thumb.webp", b"one")
    await asyncio.sleep(0.01)
    second = await storage.put("avatars/u1/a1/thumb.webp", b"two, longer")
    assert first.etag != second.etag
    assert await storage.read("avatars/u1/a1/thumb.webp") == b"two, longer"


async def test_list_by_prefix_and_delete_many(storage):
    for k in ("avatars/u1/a/original.jpg", "avatars/u1/a/thumb.jpg", "avatars/u2/b/original.jpg", "other/x.png"):
        await storage.put(k, b"x")
    assert await keys(storage, "avatars/u1/") == ["avatars/u1/a/original.jpg", "avatars/u1/a/thumb.jpg"]
    assert len(await keys(storage, "avatars/")) == 3
    await storage.delete(["avatars/u1/a/original.jpg", "avatars/u1/a/thumb.jpg", "avatars/u1/a/gone.jpg"])
    assert await keys(storage) == ["avatars/u2/b/original.jpg", "other/x.png"]


async def test_listing_more_than_one_page(storage):
    if isinstance(storage, S3Storage):
        storage.page_size = 7
    await asyncio.gather(*(storage.put(f"many/k{i:04d}.jpg", b"x") for i in range(40)))
    listed = await keys(storage, "many/")
    assert listed == [f"many/k{i:04d}.jpg" for i in range(40)]
    await storage.delete(listed)
    assert await keys(storage, "many/") == []


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../x.jpg", "avatars/../../x.jpg", "a//b.jpg", "A/b.jpg", "a/b c.jpg", "a/.hidden", "a\\b"],
)
async def test_unsafe_keys_are_refused(storage, key):
    with pytest.raises(InvalidKey):
        await storage.put(key, b"x")
    with pytest.raises(InvalidKey):
        await storage.head(key)


async def test_filesystem_never_leaves_partial_files_or_empty_dirs(tmp_path):
    store = FilesystemStorage(tmp_path)
    await store.put("avatars/u1/a1/original.jpg", b"x")
    await store.delete(["avatars/u1/a1/original.jpg"])
    assert list(tmp_path.iterdir()) == []


async def test_presigned_public_urls_work_without_credentials(s3_endpoint):
    store = storage_from(s3_settings(s3_endpoint, "public-bucket", s3_public_endpoint_url=s3_endpoint))
    await store.ensure_ready()
    await store.put("avatars/u1/a1/thumb.png", b"\x89PNG...")
    urls = MediaUrls(store, MediaSigner("s" * 40, 600))
    url = urls.url("avatars/u1/a1/thumb.png")
    assert url is not None and url.startswith(s3_endpoint) and "Signature" in url
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        assert response.status_code == 200 and response.content == b"\x89PNG..."
        assert response.headers["content-type"] == "image/png"
        tampered = await client.get(url.replace("thumb.png", "original.png"))
        assert tampered.status_code == 403
    await store.close()


def test_media_signature_round_trip_and_tampering():
    signer = MediaSigner("k" * 40, ttl_seconds=600)
    url = signer.sign("avatars/u1/a1/thumb.jpg", now=1_000_000)
    path, _, query = url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    assert path == "/media/avatars/u1/a1/thumb.jpg"
    exp, sig = params["exp"], params["sig"]
    assert 1_000_600 <= int(exp) <= 1_000_600 + signer.window
    assert signer.verify("avatars/u1/a1/thumb.jpg", exp, sig, now=1_000_000)
    assert signer.sign("avatars/u1/a1/thumb.jpg", now=1_000_001) == url  # cacheable: same URL in a window
    assert not signer.verify("avatars/u1/a1/original.jpg", exp, sig, now=1_000_000)
    assert not signer.verify("avatars/u1/a1/thumb.jpg", str(int(exp) + 1), sig, now=1_000_000)
    assert not signer.verify("avatars/u1/a1/thumb.jpg", exp, sig[:-1] + ("A" if sig[-1] != "A" else "B"))
    assert not signer.verify("avatars/u1/a1/thumb.jpg", exp, sig, now=int(exp) + 1)  # expired
    assert not MediaSigner("j" * 40, 600).verify("avatars/u1/a1/thumb.jpg", exp, sig, now=1_000_000)
    for bad_exp, bad_sig in [(None, sig), (exp, None), ("-1", sig), ("1e9", sig), (exp, "é")]:
        assert not signer.verify("avatars/u1/a1/thumb.jpg", bad_exp, bad_sig, now=1_000_000)
