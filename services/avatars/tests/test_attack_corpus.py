"""Every sample of the attack corpus through the gateway: the exact status and error, and then either a clean
stored result (re-encoded, no metadata, right orientation, thumbnail rules) or no row, no object and no charge."""

from __future__ import annotations

import attack_corpus as corpus
import pytest


@pytest.mark.parametrize("case", corpus.cases(), ids=lambda c: c.name)
async def test_upload_sample(suite, case):
    user, headers = suite.user()
    project = await suite.project(headers)
    body, content_type = corpus.multipart_body(case, {"name": "Corpus avatar"})
    response = await suite.api.post(
        f"/api/apps/avatar-creator/projects/{project}/avatars",
        content=body,
        headers={**headers, "content-type": content_type},
    )
    assert response.status_code == case.expected_status, response.text
    if case.expected_error is not None:
        assert response.json() == {"error": case.expected_error}
    if case.expected_status != 201:
        assert set(response.json()) >= {"error"}
        await suite.assert_untouched(user, headers)
        return

    avatar = response.json()["avatar"]
    original = await suite.api.get(avatar["baseImageUrl"])
    thumbnail = await suite.api.get(avatar["thumbnailUrl"])
    assert original.status_code == 200 and thumbnail.status_code == 200
    corpus.check_stored(
        case, original.content, thumbnail.content, original.headers["content-type"], thumbnail.headers["content-type"]
    )
    assert await suite.rows(user) == 1 and len(await suite.objects(user)) == 2
    balance = await suite.balance(headers)
    assert (balance["balance"], balance["held"]) == (90, 0)
