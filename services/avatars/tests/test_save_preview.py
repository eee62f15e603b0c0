"""Saving an AI preview (spec §3.2, phase two of generation): a base64 image checked like an upload, 15 credits."""

from __future__ import annotations

import base64

import pytest
from avatars_samples import decoded, exif_jpeg, png

APP = "/api/apps/avatar-creator"


def data_url(image: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


async def save(suite, headers, project: str, **body: object):
    payload = {"name": "Siti Rahman", "imageBase64": data_url(png(512, 512)), **body}
    return await suite.api.post(f"{APP}/projects/{project}/avatars/save-preview", json=payload, headers=headers)


async def test_saved_preview_is_an_ai_avatar_and_costs_15_credits(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    response = await save(
        suite,
        headers,
        project,
        gender="female",
        style="professional",
        generationPrompt="Professional Indonesian woman, smiling",
        thumbnailBase64=data_url(b"<svg onload=alert(1)>", "image/svg+xml"),  # never used: we make our own
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Avatar saved successfully"
    avatar = body["avatar"]
    assert avatar["sourceType"] == "ai_generated" and avatar["name"] == "Siti Rahman"
    assert avatar["generationPrompt"] == "Professional Indonesian woman, smiling"
    assert (avatar["gender"], avatar["style"]) == ("female", "professional")
    thumbnail = decoded((await suite.api.get(avatar["thumbnailUrl"])).content)
    assert thumbnail.size == (200, 200)
    balance = await suite.balance(headers)
    assert (balance["balance"], balance["available"], balance["held"]) == (85, 85, 0)
    assert await suite.rows(user) == 1 and len(await suite.objects(user)) == 2


async def test_bare_base64_and_metadata_stripped(suite):
    _, headers = suite.user()
    project = await suite.project(headers)
    image = base64.b64encode(exif_jpeg(gps=True)).decode()
    response = await save(suite, headers, project, imageBase64=image)
    assert response.status_code == 201, response.text
    stored = decoded((await suite.api.get(response.json()["avatar"]["baseImageUrl"])).content)
    assert not stored.getexif()  # the GPS-tagged original's EXIF is gone


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"imageBase64": "not base64 at all!"}, 400, "Invalid image data (expected base64 or a data URL)"),
        ({"imageBase64": ""}, 400, "Image file is required"),
        ({"imageBase64": data_url(b"<svg><script>alert(1)</script></svg>", "image/png")}, 400, "Invalid file type"),
        ({"imageBase64": data_url(b"<html></html>")}, 400, "Invalid file type"),
        (
            {"imageBase64": data_url(b"\xff\xd8\xff" + bytes(10 * 1024 * 1024))},
            413,
            "File too large (max 10MB)",
        ),
        ({"name": ""}, 400, "Validation error"),
        ({"imageBase64": None}, 400, "Validation error"),
        ({"gender": "robot"}, 400, "Validation error"),
        ({"prompt": "typo of generationPrompt"}, 400, "Validation error"),
    ],
)
async def test_bad_previews_change_nothing(suite, body, status, error):
    user, headers = suite.user()
    project = await suite.project(headers)
    response = await save(suite, headers, project, **body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    await suite.assert_untouched(user, headers)


async def test_oversized_body_is_refused_before_it_is_read(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    huge = b'{"name":"x","imageBase64":"' + b"A" * (15 * 1024 * 1024) + b'"}'
    response = await suite.api.post(
        f"{APP}/projects/{project}/avatars/save-preview",
        content=huge,
        headers={**headers, "content-type": "application/json"},
    )
    assert (response.status_code, response.json()["error"]) == (413, "File too large (max 10MB)")
    await suite.assert_untouched(user, headers)


async def test_missing_project_and_short_credits(suite):
    user, headers = suite.user()
    assert (await save(suite, headers, "no-such-project")).status_code == 404
    project = await suite.project(headers)
    assert [(await save(suite, headers, project)).status_code for _ in range(6)] == [201] * 6
    short = await save(suite, headers, project)
    assert (short.status_code, short.json()) == (402, {"error": "Insufficient credits", "required": 15, "current": 10})
    assert await suite.rows(user) == 6 and len(await suite.objects(user)) == 12
    assert (await suite.balance(headers))["balance"] == 10
