"""One contract for every storage backend: the filesystem, and S3 over the wire against a real S3-protocol
server running here (moto's server mode), with the same boto3 calls MinIO and AWS receive."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from lumiku_common.media import MediaSigner, MediaUrls
from lumiku_common.settings import StorageSettings
from lumiku_common.storage import (
    CHUNK_SIZE,
    DeleteFailed,
    FilesystemStorage,
    InvalidKey,
    ObjectNotFound,
    S3Storage,
    Storage,
    StorageRefused,
    StorageUnavailable,
    storage_from,
)
from lumiku_devtools.infra_selection import s3_keys
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
        s3_access_key_id=s3_keys()[0],
        s3_secret_access_key=s3_keys()[1],
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


ORIGINAL = "avatars/u1/a1/original.jpg"
# Names that exist in the store but hold no object the service wrote.
NOT_OBJECTS = ["avatars/u1/a1", "avatars/u1", "avatars/u1/a1/link.jpg", "avatars/u1/linked/x.jpg"]


def plant_non_objects(storage: Storage, outside: Path) -> None:
    """What a crash, an operator or another tool can leave beside our objects."""
    if isinstance(storage, FilesystemStorage):
        a1 = storage.root / "avatars/u1/a1"
        (a1 / ".tmp-0123456789abcdef").write_bytes(b"half an upload")
        (a1 / "link.jpg").symlink_to(a1 / "original.jpg")
        outside.mkdir()
        (outside / "x.jpg").write_bytes(b"not in the store")
        (storage.root / "avatars/u1/linked").symlink_to(outside, target_is_directory=True)
        (storage.root / "avatars/u1/Upper.JPG").write_bytes(b"no key of ours has capitals")
    else:
        assert isinstance(storage, S3Storage)
        for key in ("avatars/u1/a1/", "avatars/u1/", "avatars/u1/a1/.tmp-0123456789abcdef", "avatars/u1/Upper.JPG"):
            storage.client.put_object(Bucket=storage.bucket, Key=key, Body=b"")  # folder markers and strangers


async def test_only_objects_we_wrote_are_found(storage, tmp_path):
    """A directory, a symlink or a temporary is never served (a directory once gave 500 on GET, 200 on HEAD)."""
    await storage.put(ORIGINAL, b"\xff\xd8\xff")
    plant_non_objects(storage, tmp_path / "outside")
    for key in NOT_OBJECTS:
        assert await storage.head(key) is None, key
        with pytest.raises(ObjectNotFound):
            await storage.open(key)
    with pytest.raises(InvalidKey):  # a temporary cannot even be named
        await storage.head("avatars/u1/a1/.tmp-0123456789abcdef")
    assert await keys(storage, "avatars/") == [ORIGINAL]
    await storage.delete(["avatars/u1/a1", ORIGINAL])  # a directory is nothing to delete, and no error
    assert await keys(storage, "avatars/") == []
    if isinstance(storage, FilesystemStorage):
        assert (tmp_path / "outside/x.jpg").read_bytes() == b"not in the store"


async def test_delete_reports_the_keys_it_could_not_remove(storage, monkeypatch):
    """Each key is tried; the ones the store refused are named, so callers can keep them scheduled."""
    for key in ("avatars/u1/a/original.jpg", "avatars/u1/b/original.jpg"):
        await storage.put(key, b"x")
    if isinstance(storage, FilesystemStorage):
        refuse_unlinking(monkeypatch, storage.root / "avatars/u1/a/original.jpg")
    else:
        refuse_deleting(storage, "avatars/u1/a/original.jpg")
    with pytest.raises(DeleteFailed) as failure:
        await storage.delete(["avatars/u1/a/original.jpg", "avatars/u1/b/original.jpg"])
    assert list(failure.value.failed) == ["avatars/u1/a/original.jpg"]
    assert await keys(storage, "avatars/") == ["avatars/u1/a/original.jpg"]


def refuse_unlinking(monkeypatch, stuck: Path) -> None:
    """The OS refusing one file (permissions mean nothing to root, who runs CI here)."""
    unlink = Path.unlink

    def refusing(path: Path, missing_ok: bool = False) -> None:
        if path == stuck:
            raise PermissionError(13, "Permission denied", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refusing)


def refuse_deleting(storage: S3Storage, key: str) -> None:
    """A bucket policy that denies deleting one key: S3 answers 200 with that key under `Errors`."""
    import json

    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:DeleteObject",
                "Resource": f"arn:aws:s3:::{storage.bucket}/{key}",
            }
        ],
    }
    storage.client.put_bucket_policy(Bucket=storage.bucket, Policy=json.dumps(policy))


def s3_failing(store: S3Storage, monkeypatch, error: Exception) -> None:
    """The boto3 client failing every read the way S3 does (the code under test is what we do with it)."""

    def fail(**kwargs: object) -> None:
        raise error

    for method in ("head_object", "get_object", "list_objects_v2", "delete_objects"):
        monkeypatch.setattr(store.client, method, fail)


def client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


def endpoint_down() -> Exception:
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url="http://s3.invalid")


@pytest.mark.parametrize(
    ("make_error", "expected", "status"),
    [
        (lambda: client_error(403, "AccessDenied"), StorageRefused, 502),
        (lambda: client_error(404, "NoSuchBucket"), StorageRefused, 502),
        (lambda: client_error(503, "SlowDown"), StorageUnavailable, 503),
        (lambda: client_error(500, "InternalError"), StorageUnavailable, 503),
        (endpoint_down, StorageUnavailable, 503),
    ],
    ids=["access-denied", "no-such-bucket", "slow-down", "internal-error", "endpoint-down"],
)
async def test_s3_failures_other_than_a_missing_object_are_502_or_503(
    s3_endpoint, monkeypatch, make_error, expected, status
):
    """Never "not found" (that would hide an outage) and never a bare ClientError (a 500 in the gateway)."""
    store = storage_from(s3_settings(s3_endpoint, "failing-bucket"))
    assert isinstance(store, S3Storage)
    await store.ensure_ready()
    s3_failing(store, monkeypatch, make_error())
    for call in (
        store.head(ORIGINAL),
        store.open(ORIGINAL),
        keys(store, "avatars/"),
        store.delete([ORIGINAL]),
    ):
        with pytest.raises(expected) as raised:
            await call
        assert raised.value.status_code == status
    if status == 503:
        assert raised.value.headers == {"Retry-After": "5"}
    await store.close()


async def test_stale_temporaries_are_swept_fresh_ones_kept(tmp_path):
    """A killed upload leaves its `.tmp-` file (several MB); nothing else would ever remove it."""
    store = FilesystemStorage(tmp_path)
    await store.put(ORIGINAL, b"x")
    stale, fresh = tmp_path / "avatars/u1/a1/.tmp-00000000000000aa", tmp_path / "avatars/u1/b2/.tmp-00000000000000bb"
    fresh.parent.mkdir()
    for path in (stale, fresh):
        path.write_bytes(b"\0" * 1024)
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    os.utime(stale, (hour_ago, hour_ago))
    cutoff = datetime.now(UTC) - timedelta(minutes=30)
    assert await store.sweep_temporaries("other/", cutoff) == 0  # another prefix is not ours to sweep
    assert await store.sweep_temporaries("avatars/", cutoff) == 1
    assert not stale.exists() and fresh.exists() and await store.head(ORIGINAL) is not None
    assert await store.sweep_temporaries("avatars/", datetime.now(UTC) + timedelta(hours=1)) == 1
    assert not fresh.parent.exists()  # its emptied directory went too


async def test_s3_stale_multipart_uploads_are_aborted(s3_endpoint):
    store = storage_from(s3_settings(s3_endpoint, "multipart-bucket"))
    assert isinstance(store, S3Storage)
    await store.ensure_ready()
    store.client.create_multipart_upload(Bucket=store.bucket, Key="avatars/u1/a1/original.jpg")
    store.client.create_multipart_upload(Bucket=store.bucket, Key="other/x.jpg")
    # moto dates every upload 2010-11-10, so "younger than the cutoff" is a cutoff before that day.
    assert await store.sweep_temporaries("avatars/", datetime(2010, 1, 1, tzinfo=UTC)) == 0
    assert await store.sweep_temporaries("avatars/", datetime.now(UTC) + timedelta(minutes=1)) == 1
    left = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["other/x.jpg"]
    await store.close()


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
