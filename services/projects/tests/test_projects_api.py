"""Every project endpoint through the gateway, against real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from lumiku_devtools.testing import EventSpy
from lumiku_projects.settings import ProjectsSettings

URL = "/api/apps/avatar-creator/projects"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def create(api: httpx.AsyncClient, headers: dict[str, str], **body: object) -> dict:
    response = await api.post(URL, json={"name": "Campaign", **body}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["project"]


async def test_create_returns_201_in_the_spec_shape(api, alice):
    response = await api.post(URL, json={"name": "New Project", "description": "Optional"}, headers=alice)
    assert response.status_code == 201
    body = response.json()
    assert body["success"] is True and body["message"] == "Project created successfully"
    project = body["project"]
    assert set(project) == {"id", "userId", "name", "description", "createdAt", "updatedAt", "avatars"}
    assert project["userId"] == "alice" and project["name"] == "New Project"
    assert project["avatars"] == []
    assert ISO_Z.match(project["createdAt"]) and ISO_Z.match(project["updatedAt"])
    assert response.headers["x-request-id"]


async def test_null_description_is_absent_and_name_is_trimmed(api, alice):
    project = await create(api, alice, name="  Trimmed  ", description=None)
    assert project["name"] == "Trimmed" and project["description"] is None


async def test_list_is_newest_first_and_paginated(api, alice):
    ids = [(await create(api, alice, name=f"P{i}"))["id"] for i in range(5)]
    body = (await api.get(URL, headers=alice)).json()
    assert [p["id"] for p in body["projects"]] == ids[::-1]
    assert body["pagination"] == {"page": 1, "limit": 100, "total": 5, "totalPages": 1}
    page2 = (await api.get(URL, params={"page": 2, "limit": 2}, headers=alice)).json()
    assert [p["id"] for p in page2["projects"]] == ids[::-1][2:4]
    assert page2["pagination"] == {"page": 2, "limit": 2, "total": 5, "totalPages": 3}


@pytest.mark.parametrize("params", [{"page": 0}, {"limit": 0}, {"limit": 101}, {"page": "x"}])
async def test_bad_pagination_is_400(api, alice, params):
    response = await api.get(URL, params=params, headers=alice)
    assert response.status_code == 400
    assert response.json()["error"] == "Validation error"


async def test_get_update_delete(api, alice):
    project = await create(api, alice, description="d")
    got = await api.get(f"{URL}/{project['id']}", headers=alice)
    assert got.status_code == 200 and got.json() == {"success": True, "project": project}

    updated = await api.put(f"{URL}/{project['id']}", json={"name": "Renamed"}, headers=alice)
    assert updated.status_code == 200
    assert updated.json()["message"] == "Project updated successfully"
    assert updated.json()["project"]["name"] == "Renamed"
    assert updated.json()["project"]["description"] == "d"

    cleared = await api.put(f"{URL}/{project['id']}", json={"description": ""}, headers=alice)
    assert cleared.json()["project"]["description"] is None

    deleted = await api.delete(f"{URL}/{project['id']}", headers=alice)
    assert deleted.status_code == 200
    assert deleted.json() == {"success": True, "message": "Project deleted successfully"}
    assert (await api.get(f"{URL}/{project['id']}", headers=alice)).status_code == 404


async def test_missing_project_is_404_in_the_spec_shape(api, alice):
    for method in ("GET", "PUT", "DELETE"):
        response = await api.request(method, f"{URL}/nope", json={} if method == "PUT" else None, headers=alice)
        assert response.status_code == 404
        assert response.json() == {"error": "Project not found"}


async def test_another_users_project_is_404_and_untouched(api, alice, bob):
    project = await create(api, alice)
    assert (await api.get(f"{URL}/{project['id']}", headers=bob)).status_code == 404
    assert (await api.put(f"{URL}/{project['id']}", json={"name": "x"}, headers=bob)).status_code == 404
    assert (await api.delete(f"{URL}/{project['id']}", headers=bob)).status_code == 404
    assert (await api.get(URL, headers=bob)).json()["projects"] == []
    assert (await api.get(f"{URL}/{project['id']}", headers=alice)).json()["project"]["name"] == "Campaign"


async def test_empty_name_has_the_exact_spec_body(api, alice):
    response = await api.post(URL, json={"name": ""}, headers=alice)
    assert response.status_code == 400
    assert response.json() == {
        "error": "Validation error",
        "details": [
            {
                "code": "too_small",
                "minimum": 1,
                "type": "string",
                "inclusive": True,
                "exact": False,
                "path": ["name"],
                "message": "String must contain at least 1 character(s)",
            }
        ],
    }


@pytest.mark.parametrize(
    ("body", "code", "path"),
    [
        ({}, "invalid_type", ["name"]),
        ({"name": None}, "invalid_type", ["name"]),
        ({"name": "x" * 101}, "too_big", ["name"]),
        ({"name": "   "}, "too_small", ["name"]),
        ({"name": 42}, "invalid_type", ["name"]),
        ({"name": "ok", "description": "x" * 501}, "too_big", ["description"]),
        ({"name": "ok", "description": ["x"]}, "invalid_type", ["description"]),
        ({"name": "ok", "nmae": "typo"}, "unrecognized_keys", []),
        ({"name": "nul\x00byte"}, "custom", ["name"]),
    ],
)
async def test_validation_errors(api, alice, body, code, path):
    response = await api.post(URL, json=body, headers=alice)
    assert response.status_code == 400, response.text
    details = response.json()["details"]
    assert [(d["code"], d["path"]) for d in details] == [(code, path)]
    assert (await api.get(URL, headers=alice)).json()["projects"] == []


async def test_max_lengths_are_accepted(api, alice):
    project = await create(api, alice, name="x" * 100, description="y" * 500)
    assert len(project["name"]) == 100


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b"null", b"\xff\xfe"])
async def test_malformed_bodies_are_400(api, alice, raw):
    response = await api.post(URL, content=raw, headers={**alice, "content-type": "application/json"})
    assert response.status_code == 400
    assert "error" in response.json()


async def test_update_validation_changes_nothing(api, alice):
    project = await create(api, alice)
    response = await api.put(f"{URL}/{project['id']}", json={"name": ""}, headers=alice)
    assert response.status_code == 400
    assert (await api.get(f"{URL}/{project['id']}", headers=alice)).json()["project"]["name"] == "Campaign"


def _token(settings: ProjectsSettings, **claims: object) -> str:
    base = {"userId": "alice", "email": "a@x.io", "exp": datetime.now(UTC) + timedelta(hours=1)}
    return jwt.encode({**base, **claims}, settings.jwt_secret, algorithm="HS256")


def _bad_tokens(settings: ProjectsSettings) -> dict[str, str]:
    none_alg = jwt.encode({"userId": "alice", "exp": 9999999999}, None, algorithm="none")  # type: ignore[arg-type]
    return {
        "expired": _token(settings, exp=datetime.now(UTC) - timedelta(seconds=5)),
        "wrong_secret": jwt.encode({"userId": "alice", "exp": 9999999999}, "another-secret-" * 3, algorithm="HS256"),
        "alg_none": none_alg,
        "no_exp": jwt.encode({"userId": "alice"}, settings.jwt_secret, algorithm="HS256"),
        "no_user": _token(settings, userId=None),
        "bad_role": _token(settings, role="root"),
        "hs512": jwt.encode({"userId": "alice", "exp": 9999999999}, settings.jwt_secret, algorithm="HS512"),
        "garbage": "not.a.jwt",
    }


@pytest.mark.parametrize(
    "kind", ["expired", "wrong_secret", "alg_none", "no_exp", "no_user", "bad_role", "hs512", "garbage"]
)
async def test_invalid_tokens_are_401(api, settings, kind):
    token = _bad_tokens(settings)[kind]
    response = await api.post(URL, json={"name": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid token"}


@pytest.mark.parametrize("user_id", ["u" * 129, "nul\x00inside", "\x01"], ids=["129-chars", "nul", "control"])
async def test_validly_signed_tokens_with_unusable_user_ids_are_401(api, settings, user_id):
    # Found by schema fuzzing's issue (8): these reached the database and failed there with a 500.
    token = _token(settings, userId=user_id)
    for request in (api.get(URL, headers=_bearer(token)), api.post(URL, json={"name": "x"}, headers=_bearer(token))):
        response = await request
        assert (response.status_code, response.json()) == (401, {"error": "Invalid token"})
        assert response.headers["www-authenticate"] == "Bearer"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Token x"])
async def test_missing_or_malformed_header_is_401(api, header):
    headers = {} if header is None else {"Authorization": header}
    response = await api.get(URL, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized"}


async def test_sub_claim_is_accepted(api, settings):
    token = jwt.encode({"sub": "carol", "exp": 9999999999}, settings.jwt_secret, algorithm="HS256")
    response = await api.post(URL, json={"name": "x"}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201 and response.json()["project"]["userId"] == "carol"


async def test_changes_publish_events_through_the_outbox(api, alice, settings):
    async with EventSpy(settings.amqp_url, settings.events_exchange, "project.*") as spy:
        project = await create(api, alice)
        await api.put(f"{URL}/{project['id']}", json={"name": "Renamed"}, headers=alice)
        await api.put(f"{URL}/{project['id']}", json={"name": "Renamed"}, headers=alice)  # no change, no event
        await api.delete(f"{URL}/{project['id']}", headers=alice)
        deleted = await spy.wait_for("project.deleted")
    assert [e["type"] for e in spy.events] == ["project.created", "project.updated", "project.deleted"]
    envelope = deleted[0]
    assert envelope["data"] == {"projectId": project["id"]}
    assert envelope["userId"] == "alice" and envelope["source"] == "projects"
    assert envelope["subject"] == project["id"] and envelope["correlationId"]
    assert ISO_Z.match(envelope["time"])


async def test_rejected_requests_publish_nothing(api, alice, settings):
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        await api.post(URL, json={"name": ""}, headers=alice)
        await api.delete(f"{URL}/missing", headers=alice)
        await create(api, alice)  # a marker: once it arrives, anything earlier would have too
        await spy.wait_for("project.created")
    assert [e["type"] for e in spy.events] == ["project.created"]


async def test_a_create_retried_with_its_idempotency_key_replays_the_first_answer(api, alice):
    keyed = {**alice, "Idempotency-Key": "create-1"}
    first = await api.post(URL, json={"name": "Once", "description": "d"}, headers=keyed)
    retry = await api.post(URL, json={"name": "Once", "description": "d"}, headers=keyed)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert "idempotent-replayed" not in first.headers and retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert (await api.get(URL, headers=alice)).json()["pagination"]["total"] == 1


@pytest.mark.parametrize("other", [{"name": "Other"}, {"name": "Once", "description": "other"}], ids=str)
async def test_the_idempotency_key_with_another_body_is_409_and_creates_nothing(api, alice, other):
    keyed = {**alice, "Idempotency-Key": "create-1"}
    assert (await api.post(URL, json={"name": "Once", "description": "d"}, headers=keyed)).status_code == 201
    reused = await api.post(URL, json=other, headers=keyed)
    assert (reused.status_code, reused.json()) == (
        409,
        {"error": "Idempotency key already used with a different request"},
    )
    assert (await api.get(URL, headers=alice)).json()["pagination"]["total"] == 1


async def test_idempotency_keys_are_per_user_and_concurrent_twins_create_one_project(api, alice, bob):
    for headers in (alice, bob):
        keyed = {**headers, "Idempotency-Key": "same"}
        answers = await asyncio.gather(*(api.post(URL, json={"name": "Twin"}, headers=keyed) for _ in range(3)))
        assert [a.status_code for a in answers] == [201] * 3
        assert len({a.json()["project"]["id"] for a in answers}) == 1
        assert sorted(a.headers.get("idempotent-replayed", "") for a in answers) == ["", "true", "true"]
        assert (await api.get(URL, headers=headers)).json()["pagination"]["total"] == 1


@pytest.mark.parametrize("key", [b"", b"x" * 201, b"a b", b"\xc3\xa9"], ids=["empty", "long", "space", "utf8"])
async def test_a_malformed_idempotency_key_is_400_and_creates_nothing(api, alice, key):
    response = await api.post(URL, json={"name": "P"}, headers={**alice, "Idempotency-Key": key})
    assert response.status_code == 400 and response.json()["error"] == "Validation error"
    assert (await api.get(URL, headers=alice)).json()["pagination"]["total"] == 0
