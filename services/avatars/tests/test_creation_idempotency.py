"""`Idempotency-Key` on the writes that create a paid avatar (upload, save-preview), through the gateway: a retry
is answered with the avatar the key first made and charges nothing; the key with another request is 409; a
request that failed leaves its key free; concurrent twins make one avatar, one charge and no stray object."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from avatars_samples import jpeg, png
from sqlalchemy import text
from test_failure_paths import avatars_refused_for
from test_save_preview import data_url

from lumiku_common.idempotency import user_scoped
from lumiku_common.ids import new_id
from lumiku_devtools.testing import HeldFirstCall, auth

APP = "/api/apps/avatar-creator"
REPLAYED = "Idempotent-Replayed"
REUSED = {"error": "Idempotency key already used with a different request"}
IN_PROGRESS = {"error": "A request with this Idempotency-Key is still in progress"}


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def save_preview(suite, headers: dict[str, str], project: str, **body: Any):
    payload = {"name": "Siti", "imageBase64": data_url(png(256, 256)), **body}
    return await suite.api.post(f"{APP}/projects/{project}/avatars/save-preview", json=payload, headers=headers)


async def assert_charged(suite, user: str, headers: dict[str, str], avatars: int, spent: int) -> None:
    balance = await suite.balance(headers)
    assert (balance["balance"], balance["available"], balance["held"]) == (100 - spent, 100 - spent, 0)
    assert await suite.rows(user) == avatars and len(await suite.objects(user)) == 2 * avatars


async def test_an_upload_retried_with_its_key_answers_the_same_avatar_and_charges_once(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    image = jpeg(640, 480)
    first = await suite.upload(keyed(headers, "upload-1"), project, image, style="casual")
    retry = await suite.upload(keyed(headers, "upload-1"), project, image, style="casual")
    assert (first.status_code, retry.status_code) == (201, 201), (first.text, retry.text)
    assert REPLAYED not in first.headers and retry.headers[REPLAYED] == "true"
    assert retry.json()["avatar"]["id"] == first.json()["avatar"]["id"]
    assert retry.json()["message"] == first.json()["message"] == "Avatar created successfully"
    # The same avatar, its media URLs signed anew: they serve the image.
    assert (await suite.api.get(retry.json()["avatar"]["thumbnailUrl"])).status_code == 200
    await assert_charged(suite, user, headers, avatars=1, spent=10)


async def test_a_saved_preview_retried_with_its_key_answers_the_same_avatar_and_charges_once(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    first = await save_preview(suite, keyed(headers, "preview-1"), project, gender="female")
    retry = await save_preview(suite, keyed(headers, "preview-1"), project, gender="female")
    assert (first.status_code, retry.status_code) == (201, 201), (first.text, retry.text)
    assert retry.headers[REPLAYED] == "true" and retry.json()["avatar"] == first.json()["avatar"] | {
        "baseImageUrl": retry.json()["avatar"]["baseImageUrl"],
        "thumbnailUrl": retry.json()["avatar"]["thumbnailUrl"],
    }
    assert retry.json()["message"] == "Avatar saved successfully"
    await assert_charged(suite, user, headers, avatars=1, spent=15)


async def test_a_replay_is_answered_before_any_charge_even_with_no_credits_left(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    first = await suite.upload(keyed(headers, "early"), project, jpeg())
    for _ in range(9):  # spends the other 90 credits
        assert (await suite.upload(headers, project, jpeg())).status_code == 201
    assert (await suite.upload(headers, project, jpeg())).status_code == 402
    retry = await suite.upload(keyed(headers, "early"), project, jpeg())
    assert (retry.status_code, retry.headers.get(REPLAYED)) == (201, "true"), retry.text
    assert retry.json()["avatar"]["id"] == first.json()["avatar"]["id"]
    await assert_charged(suite, user, headers, avatars=10, spent=100)


@pytest.mark.parametrize(
    "change",
    [
        {"name": "Another name"},
        {"style": "formal"},
        {"image": "another"},
        {"project": "another"},
    ],
    ids=["name", "attribute", "image", "project"],
)
async def test_the_key_with_any_other_upload_is_409_and_changes_nothing(suite, change):
    user, headers = suite.user()
    project, other_project = await suite.project(headers), await suite.project(headers, "Other")
    first = await suite.upload(keyed(headers, "k"), project, jpeg(320, 240), style="casual")
    assert first.status_code == 201, first.text
    fields = {"style": "casual", **{k: v for k, v in change.items() if k not in ("image", "project")}}
    image = jpeg(321, 240) if "image" in change else jpeg(320, 240)
    target = other_project if "project" in change else project
    reused = await suite.upload(keyed(headers, "k"), target, image, **fields)
    assert (reused.status_code, reused.json()) == (409, REUSED)
    await assert_charged(suite, user, headers, avatars=1, spent=10)


async def test_an_upload_key_is_not_a_save_preview_key(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    uploaded = await suite.upload(keyed(headers, "shared"), project, png(256, 256), "p.png", "image/png")
    assert uploaded.status_code == 201
    reused = await save_preview(suite, keyed(headers, "shared"), project)
    assert (reused.status_code, reused.json()) == (409, REUSED)
    await assert_charged(suite, user, headers, avatars=1, spent=10)


async def test_keys_belong_to_their_user(suite):
    alice, alice_headers = suite.user()
    bob, bob_headers = suite.user()
    for user, headers in ((alice, alice_headers), (bob, bob_headers)):
        project = await suite.project(headers)
        response = await suite.upload(keyed(headers, "same-key"), project, jpeg())
        assert response.status_code == 201 and REPLAYED not in response.headers
        await assert_charged(suite, user, headers, avatars=1, spent=10)


async def test_a_refused_request_leaves_its_key_free(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    refused = await suite.upload(keyed(headers, "k"), project, b"not an image")
    assert refused.status_code == 400
    created = await suite.upload(keyed(headers, "k"), project, jpeg(), name="Another")
    assert created.status_code == 201 and REPLAYED not in created.headers
    await assert_charged(suite, user, headers, avatars=1, spent=10)


@pytest.mark.unhandled_errors  # PostgreSQL refusing the INSERT: our 500, logged as such
async def test_a_commit_that_failed_rolls_the_key_back_with_the_avatar(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    async with avatars_refused_for(suite, user):
        failed = await suite.upload(keyed(headers, "k"), project, jpeg())
    assert failed.status_code == 500
    retry = await suite.upload(keyed(headers, "k"), project, jpeg())
    assert retry.status_code == 201 and REPLAYED not in retry.headers, retry.text
    await assert_charged(suite, user, headers, avatars=1, spent=10)


async def test_the_key_of_a_deleted_avatar_is_409(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    avatar = (await suite.upload(keyed(headers, "k"), project, jpeg())).json()["avatar"]
    assert (await suite.api.delete(f"{APP}/avatars/{avatar['id']}", headers=headers)).status_code == 200
    retry = await suite.upload(keyed(headers, "k"), project, jpeg())
    assert retry.status_code == 409
    assert retry.json() == {"error": "Idempotency key already used for an avatar that has since been deleted"}
    await assert_charged(suite, user, headers, avatars=0, spent=10)


async def test_a_retry_while_the_first_attempt_runs_is_409_in_progress_and_pays_nothing(suite, monkeypatch):
    user, headers = suite.user()
    project = await suite.project(headers)
    for _ in range(9):  # 10 credits left: a second charge would be 402
        assert (await suite.upload(headers, project, jpeg())).status_code == 201
    held = HeldFirstCall(suite.workflows.credits, "reserve", monkeypatch)
    image = jpeg(400, 300)
    first = asyncio.create_task(suite.upload(keyed(headers, "slow"), project, image))
    await asyncio.wait_for(held.reached.wait(), 10)
    retry = await suite.upload(keyed(headers, "slow"), project, image)
    assert (retry.status_code, retry.json()) == (409, IN_PROGRESS)
    assert retry.headers["retry-after"] == "1"
    held.go.set()
    assert (await first).status_code == 201
    later = await suite.upload(keyed(headers, "slow"), project, image)
    assert (later.status_code, later.headers.get(REPLAYED)) == (201, "true")
    assert later.json()["avatar"]["id"] == (await first).json()["avatar"]["id"]
    await assert_charged(suite, user, headers, avatars=10, spent=100)


async def test_a_claim_whose_attempt_looks_dead_is_taken_over_and_that_attempt_undoes_itself(suite, monkeypatch):
    """After a minute a retry takes the key over; the first attempt, when it comes to commit, finds its claim
    gone, releases its hold, removes its objects and answers the avatar the retry made."""
    user, headers = suite.user()
    project = await suite.project(headers)
    held = HeldFirstCall(suite.workflows.credits, "reserve", monkeypatch)
    image = jpeg(400, 300)
    first = asyncio.create_task(suite.upload(keyed(headers, "stuck"), project, image))
    await asyncio.wait_for(held.reached.wait(), 10)
    async with suite.avatars_app.state.db.unit_of_work() as session:
        aged = text("UPDATE idempotency_keys SET created_at = now() - interval '61 seconds' WHERE key = :k")
        assert (await session.execute(aged, {"k": user_scoped(user, "stuck")})).rowcount == 1
    retry = await suite.upload(keyed(headers, "stuck"), project, image)
    assert retry.status_code == 201 and REPLAYED not in retry.headers, retry.text
    held.go.set()
    late = await first
    assert (late.status_code, late.headers.get(REPLAYED)) == (201, "true"), late.text
    assert late.json()["avatar"]["id"] == retry.json()["avatar"]["id"]
    await assert_charged(suite, user, headers, avatars=1, spent=10)


async def test_keys_of_users_whose_ids_share_a_prefix_never_meet(suite):
    """'u:x' with key 'k' and 'u' with key 'x:k' once named the same record ("u:x:k")."""
    base = f"user-{new_id()}"
    first, second = auth(suite.settings, f"{base}:x"), auth(suite.settings, base)
    body = {"name": "Secret plans", "description": "of the first user"}
    created = await suite.api.post(f"{APP}/projects", json=body, headers=keyed(first, "k"))
    assert created.status_code == 201
    other = await suite.api.post(f"{APP}/projects", json=body, headers=keyed(second, "x:k"))
    assert other.status_code == 201 and REPLAYED not in other.headers
    assert other.json()["project"]["id"] != created.json()["project"]["id"]


@pytest.mark.parametrize("key", ["", "x" * 201, "has space", "tab\tinside", "é-accent"])
async def test_a_malformed_key_is_400_and_changes_nothing(suite, key):
    user, headers = suite.user()
    project = await suite.project(headers)
    response = await suite.upload({**headers, "Idempotency-Key": key.encode()}, project, jpeg())
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Validation error"
    assert [d["path"] for d in response.json()["details"]] == [["Idempotency-Key"]]
    await suite.assert_untouched(user, headers)
