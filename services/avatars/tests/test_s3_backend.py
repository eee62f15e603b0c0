"""The same service with its images on S3 (moto's S3 server over the wire): upload, media, delete."""

from __future__ import annotations

from avatars_samples import decoded, jpeg

from lumiku_common.storage import S3Storage
from lumiku_devtools.testing import eventually


async def test_upload_serve_and_delete_on_s3(s3_suite):
    suite = s3_suite
    assert isinstance(suite.storage, S3Storage)
    user, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg(400, 300))
    keys = await suite.objects(user)
    assert len(keys) == 2 and all(k.startswith("avatars/") for k in keys)

    thumbnail = await suite.api.get(avatar["thumbnailUrl"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert decoded(thumbnail.content).size == (200, 200)
    etag = thumbnail.headers["etag"]
    assert (await suite.api.get(avatar["thumbnailUrl"], headers={"If-None-Match": etag})).status_code == 304
    assert (await suite.balance(headers))["balance"] == 90

    deleted = await suite.api.delete(f"/api/apps/avatar-creator/avatars/{avatar['id']}", headers=headers)
    assert deleted.status_code == 200
    await eventually(lambda: suite.no_objects(user), what="objects removed")
    assert (await suite.api.get(avatar["baseImageUrl"])).status_code == 404
