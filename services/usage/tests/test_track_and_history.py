"""track-usage and usage-history through the gateway: exact bodies, idempotency, isolation, validation,
keyset pages, the summary from rollups, and avatars' counter following usage.recorded."""

from __future__ import annotations

import base64
import re

from usage_support import APP, Suite

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BODY = {
    "avatarId": "",
    "appId": "pose-generator",
    "appName": "Pose Generator",
    "action": "generate_pose",
    "referenceId": "pose-xyz-123",
    "referenceType": "generated_pose",
    "metadata": {"poseTemplate": "fashion-standing-01", "quality": "hd"},
}


async def test_track_usage_answers_the_usage_and_the_counter_follows(suite: Suite) -> None:
    _, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    response = await suite.api.post(f"{APP}/track-usage", json={**BODY, "avatarId": avatar_id}, headers=alice)
    assert response.status_code == 201, response.text
    body = response.json()
    usage = body["usage"]
    assert ISO.match(usage["createdAt"]) and len(usage["id"]) == 26
    assert body == {
        "success": True,
        "usage": {**BODY, "avatarId": avatar_id, "id": usage["id"], "createdAt": usage["createdAt"]},
    }
    await suite.counted(alice, avatar_id, 1)

    history = await suite.history(alice, avatar_id)
    assert history.status_code == 200
    assert history.json() == {
        "success": True,
        "history": [{k: v for k, v in usage.items() if k != "avatarId"}],
        "summary": {"totalUsage": 1, "appBreakdown": {"pose-generator": 1}, "lastUsed": usage["createdAt"]},
        "nextCursor": None,
    }


async def test_idempotency_key_replays_the_first_answer_and_refuses_another_body(suite: Suite) -> None:
    _, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    headers = {**alice, "Idempotency-Key": "pose-xyz-123"}
    body = {**BODY, "avatarId": avatar_id}
    first = await suite.api.post(f"{APP}/track-usage", json=body, headers=headers)
    replay = await suite.api.post(f"{APP}/track-usage", json=body, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json() and replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    other = await suite.api.post(f"{APP}/track-usage", json={**body, "action": "other"}, headers=headers)
    assert other.status_code == 409
    assert other.json() == {"error": "Idempotency key already used with a different request"}
    assert await suite.rows(avatar_id) == 1
    await suite.counted(alice, avatar_id, 1)
    # Keys are per user: bob's same key is his own (and his request is about an avatar that is not his).
    _, bob = suite.user()
    stranger = await suite.api.post(f"{APP}/track-usage", json=body, headers={**bob, "Idempotency-Key": "pose-xyz-123"})
    assert stranger.status_code == 404


async def test_another_users_or_a_missing_avatar_is_404_and_records_nothing(suite: Suite) -> None:
    _, alice = suite.user()
    _, bob = suite.user()
    avatar_id = await suite.avatar(alice)
    for target in (avatar_id, "no-such-avatar"):
        response = await suite.api.post(f"{APP}/track-usage", json={**BODY, "avatarId": target}, headers=bob)
        assert (response.status_code, response.json()) == (404, {"error": "Avatar not found"})
        history = await suite.history(bob, target)
        assert (history.status_code, history.json()) == (404, {"error": "Avatar not found"})
    assert await suite.rows(avatar_id) == 0
    assert await suite.usage_count(alice, avatar_id) == 0


async def test_validation_errors_in_the_spec_shape(suite: Suite) -> None:
    _, alice = suite.user()
    cases = [
        ({**BODY, "avatarId": "a", "appId": "Pose Generator!"}, ["appId"], "custom"),
        ({**BODY, "avatarId": "a", "appName": "x" * 101}, ["appName"], "too_big"),
        ({**BODY, "avatarId": "a", "referenceId": "r" * 201}, ["referenceId"], "too_big"),
        ({**BODY, "avatarId": "a", "metadata": "not an object"}, ["metadata"], "invalid_type"),
        ({**BODY, "avatarId": "a", "metadata": {"blob": "x" * 9000}}, ["metadata"], "custom"),
        ({**BODY, "avatarId": "a", "extra": 1}, [], "unrecognized_keys"),
        ({k: v for k, v in BODY.items() if k != "action"} | {"avatarId": "a"}, ["action"], "invalid_type"),
    ]
    for body, path, code in cases:
        response = await suite.api.post(f"{APP}/track-usage", json=body, headers=alice)
        assert response.status_code == 400, (body, response.text)
        payload = response.json()
        assert payload["error"] == "Validation error"
        assert [(d["path"], d["code"]) for d in payload["details"]] == [(path, code)], payload
    bad_key = await suite.api.post(
        f"{APP}/track-usage", json={**BODY, "avatarId": "a"}, headers={**alice, "Idempotency-Key": "x" * 201}
    )
    assert bad_key.status_code == 400


async def test_history_pages_by_cursor_filters_and_keeps_the_whole_summary(suite: Suite) -> None:
    _, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    apps = ["pose-generator"] * 5 + ["poster-editor"] * 3
    for n, app in enumerate(apps):
        body = {**BODY, "avatarId": avatar_id, "appId": app, "referenceId": f"ref-{n}"}
        assert (await suite.api.post(f"{APP}/track-usage", json=body, headers=alice)).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await suite.history(alice, avatar_id, **params)).json()
        assert page["summary"]["totalUsage"] == 8
        assert page["summary"]["appBreakdown"] == {"pose-generator": 5, "poster-editor": 3}
        seen += [h["referenceId"] for h in page["history"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [f"ref-{n}" for n in reversed(range(8))]  # newest first, each once
    only = (await suite.history(alice, avatar_id, appId="poster-editor")).json()
    assert [h["referenceId"] for h in only["history"]] == ["ref-7", "ref-6", "ref-5"]
    assert only["summary"]["totalUsage"] == 8
    latest = only["history"][0]["createdAt"]
    window = (await suite.history(alice, avatar_id, to=latest)).json()
    assert "ref-7" not in [h["referenceId"] for h in window["history"]]
    for params in ({"limit": 501}, {"limit": 0}, {"cursor": "%%%"}, {"from": "yesterday"}):
        assert (await suite.history(alice, avatar_id, **params)).status_code == 400, params
    # Cursors a client can forge: a time with no UTC (year 1 at +14:00), past the calendar, before 1970.
    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59+00:00"):
        forged = base64.urlsafe_b64encode(f"{at}|x".encode()).decode().rstrip("=")
        response = await suite.history(alice, avatar_id, cursor=forged)
        assert (response.status_code, response.json()["error"]) == (400, "Validation error"), (at, response.text)
    await suite.counted(alice, avatar_id, 8)


async def test_analytics_series_totals_top_avatars_and_csv(suite: Suite) -> None:
    _, alice = suite.user()
    first, second = await suite.avatar(alice), await suite.avatar(alice)
    for avatar_id, app, action in [
        (first, "pose-generator", "generate_pose"),
        (first, "pose-generator", "generate_pose"),
        (second, "poster-editor", "create_poster"),
    ]:
        body = {**BODY, "avatarId": avatar_id, "appId": app, "action": action, "referenceId": "=HYPERLINK(1)"}
        assert (await suite.api.post(f"{APP}/track-usage", json=body, headers=alice)).status_code == 201
    response = await suite.api.get(f"{APP}/usage", params={"granularity": "hour"}, headers=alice)
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["total"] == 3 and got["granularity"] == "hour"
    assert got["byApp"] == {"pose-generator": 2, "poster-editor": 1}
    assert got["topAvatars"] == [{"avatarId": first, "uses": 2}, {"avatarId": second, "uses": 1}]
    assert sum(b["uses"] for b in got["series"]) == 3 and all(ISO.match(b["start"]) for b in got["series"])
    month = (
        await suite.api.get(f"{APP}/usage", params={"granularity": "month", "appId": "poster-editor"}, headers=alice)
    ).json()
    assert month["total"] == 1 and month["series"][0]["start"].endswith("-01T00:00:00.000Z")
    csv = await suite.api.get(f"{APP}/usage", params={"format": "csv"}, headers=alice)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().split("\r\n")
    assert lines[0] == "id,createdAt,avatarId,appId,appName,action,referenceId,referenceType,metadata"
    assert len(lines) == 4 and all(",'=HYPERLINK(1)," in line for line in lines[1:])
    bad = await suite.api.get(f"{APP}/usage", params={"granularity": "week"}, headers=alice)
    assert bad.status_code == 400
