"""Reading, listing, editing and deleting avatars; the project cascade, usage counters, stats, the internal
composition endpoint and the orphan sweeper."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from avatars_samples import events_about, jpeg, png
from sqlalchemy import text

from lumiku_avatars import service
from lumiku_avatars.schemas import AvatarUpdate
from lumiku_common.auth import SERVICE_TOKEN_HEADER, ServiceTokens
from lumiku_common.ids import new_id
from lumiku_devtools.testing import eventually, publish_raw

APP = "/api/apps/avatar-creator"


async def test_get_returns_the_avatar_with_its_project(suite):
    _, headers = suite.user()
    project = await suite.project(headers, name="Launch")
    avatar = await suite.created(headers, project, jpeg())
    response = await suite.api.get(f"{APP}/avatars/{avatar['id']}", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    got = body["avatar"]
    assert got["id"] == avatar["id"] and got["name"] == "My Avatar"
    assert got["project"]["id"] == project and got["project"]["name"] == "Launch"
    assert "avatars" not in got["project"]


async def test_an_avatar_read_again_asks_for_its_project_alongside_its_own_read(suite, monkeypatch):
    """Once an avatar's project is known, the project call starts before the avatar's row is read: the read is
    held until the call came (it would wait 5 s and count as late if the two went one after the other)."""
    _, headers = suite.user()
    project = await suite.project(headers, name="Launch")
    avatar = await suite.created(headers, project, jpeg())
    asked, late = asyncio.Event(), []
    workflows = suite.workflows
    ensure_owned, read_avatar = workflows.projects.ensure_owned, service.read_avatar

    async def project_call(*args):
        asked.set()
        return await ensure_owned(*args)

    async def held_read(*args):
        try:
            await asyncio.wait_for(asked.wait(), 5)
        except TimeoutError:
            late.append(args)
        return await read_avatar(*args)

    url = f"{APP}/avatars/{avatar['id']}"
    first = await suite.api.get(url, headers=headers)  # its project is not known yet
    monkeypatch.setattr(workflows.projects, "ensure_owned", project_call)
    monkeypatch.setattr(service, "read_avatar", held_read)
    asked.clear()
    again = await suite.api.get(url, headers=headers)
    assert late == [] and again.status_code == 200 and again.json() == first.json()
    assert again.json()["avatar"]["project"]["name"] == "Launch"


async def test_a_known_avatar_of_another_user_or_deleted_is_still_404_avatar_not_found(suite):
    """The early project call for someone else's (or a deleted) avatar fails too; the avatar's own 404 answers."""
    _, headers = suite.user()
    _, intruder = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg())
    url = f"{APP}/avatars/{avatar['id']}"
    assert (await suite.api.get(url, headers=headers)).status_code == 200  # its project is known from now on
    stranger = await suite.api.get(url, headers=intruder)
    assert (stranger.status_code, stranger.json()) == (404, {"error": "Avatar not found"})
    assert (await suite.api.delete(url, headers=headers)).status_code == 200
    gone = await suite.api.get(url, headers=headers)
    assert (gone.status_code, gone.json()) == (404, {"error": "Avatar not found"})


async def test_another_users_avatar_is_404_everywhere(suite):
    user, headers = suite.user()
    _, intruder = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg())
    url = f"{APP}/avatars/{avatar['id']}"
    for method, body in (("GET", None), ("PUT", {"name": "Stolen"}), ("DELETE", None)):
        response = await suite.api.request(method, url, json=body, headers=intruder)
        assert response.status_code == 404 and response.json() == {"error": "Avatar not found"}
    listed = await suite.api.get(f"{APP}/avatars", headers=intruder)
    assert listed.json()["avatars"] == [] and listed.json()["pagination"]["total"] == 0
    stats = (await suite.api.get(f"{APP}/stats", headers=intruder)).json()["stats"]
    assert stats["totalAvatars"] == 0
    assert (await suite.api.get(url, headers=headers)).json()["avatar"]["name"] == "My Avatar"
    assert await suite.rows(user) == 1


async def test_list_filters_search_and_pagination(suite):
    _, headers = suite.user()
    first, second = await suite.project(headers), await suite.project(headers)
    made = [
        await suite.created(headers, first, jpeg(64, 64), name="Siti 100%", gender="female", style="formal"),
        await suite.created(headers, first, jpeg(64, 64), name="Budi", gender="male", ageRange="young"),
        await suite.created(headers, second, png(64, 64), name="siti_two", gender="female"),
    ]
    ids = [a["id"] for a in made]

    async def listed(**params):
        response = await suite.api.get(f"{APP}/avatars", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["avatars"]]

    assert await listed() == ids[::-1]
    assert await listed(projectId=first) == ids[1::-1]
    assert await listed(gender="female") == [ids[2], ids[0]]
    assert await listed(ageRange="young") == [ids[1]]
    assert await listed(style="formal") == [ids[0]]
    assert await listed(sourceType="upload") == ids[::-1]
    assert await listed(sourceType="ai_generated") == []
    assert await listed(search="SITI") == [ids[2], ids[0]]
    assert await listed(search="%") == [ids[0]]  # wildcards are literal
    assert await listed(search="_") == [ids[2]]
    page = (await suite.api.get(f"{APP}/avatars", params={"page": 2, "limit": 2}, headers=headers)).json()
    assert [a["id"] for a in page["avatars"]] == [ids[0]]
    assert page["pagination"] == {"page": 2, "limit": 2, "total": 3, "totalPages": 2}
    for bad in ({"gender": "robot"}, {"limit": 0}, {"sourceType": "x"}):
        response = await suite.api.get(f"{APP}/avatars", params=bad, headers=headers)
        assert response.status_code == 400 and response.json()["error"] == "Validation error"


async def test_update_changes_fields_and_emits_avatar_updated(suite, spy):
    _, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg(), ethnicity="asian")
    url = f"{APP}/avatars/{avatar['id']}"
    response = await suite.api.put(
        url, json={"name": "Renamed", "style": "professional", "ethnicity": ""}, headers=headers
    )
    assert response.status_code == 200
    assert response.json()["message"] == "Avatar updated successfully"
    updated = response.json()["avatar"]
    assert (updated["name"], updated["style"], updated["ethnicity"]) == ("Renamed", "professional", None)
    assert updated["baseImageUrl"].startswith("/media/")
    events = await events_about(spy, "avatar.updated", {avatar["id"]})
    assert [e["data"]["name"] for e in events] == ["Renamed"]

    for bad in ({"gender": "robot"}, {"name": ""}, {"nmae": "typo"}, {"personaAge": 0}):
        refused = await suite.api.put(url, json=bad, headers=headers)
        assert refused.status_code == 400 and refused.json()["error"] == "Validation error"
    assert (await suite.api.get(url, headers=headers)).json()["avatar"]["name"] == "Renamed"


# One value per updatable field, multi-word where the field is text (they were once cut at the first word).
UPDATES = {
    "name": "Summer Campaign Hero Shot",
    "gender": "female",
    "age_range": "mature",
    "style": "traditional",
    "ethnicity": "South East Asian",
    "body_type": "full_body",
    "persona_name": "Dewi Lestari Putri",
    "persona_age": 42,
    "persona_personality": "Warm, curious and very patient with customers",
    "persona_background": "Grew up in Bandung; studied visual design in Jakarta",
    "hair_style": "long wavy bob",
    "hair_color": "dark chestnut brown",
    "eye_color": "deep hazel green",
    "skin_tone": "warm light olive",
    "seed_used": 2**63 - 1,
}


async def test_every_updatable_field_updates_alone_and_is_stored(suite):
    assert set(UPDATES) == set(AvatarUpdate.model_fields), "a new updatable field needs a value here"
    _, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg())
    url = f"{APP}/avatars/{avatar['id']}"
    expected = {k: v for k, v in avatar.items() if k not in ("updatedAt", "baseImageUrl", "thumbnailUrl")}
    for field, value in UPDATES.items():
        key = AvatarUpdate.model_fields[field].alias or field
        response = await suite.api.put(url, json={key: value}, headers=headers)
        assert response.status_code == 200, (field, response.text)
        expected[key] = value
        stored = (await suite.api.get(url, headers=headers)).json()["avatar"]
        # The field changed to exactly what was sent, and nothing else did.
        assert {k: stored[k] for k in expected} == expected, field


async def test_delete_removes_row_objects_and_media(suite, spy):
    user, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg())
    assert (await suite.api.get(avatar["thumbnailUrl"])).status_code == 200
    response = await suite.api.delete(f"{APP}/avatars/{avatar['id']}", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Avatar deleted successfully"}
    assert await suite.rows(user) == 0

    await eventually(lambda: suite.no_objects(user))
    for url in (avatar["baseImageUrl"], avatar["thumbnailUrl"]):
        gone = await suite.api.get(url)
        assert gone.status_code == 404 and gone.json() == {"error": "Not found"}
    events = await events_about(spy, "avatar.deleted", {avatar["id"]})
    assert [e["data"] for e in events] == [{"avatarId": avatar["id"], "projectId": avatar["projectId"]}]
    assert (await suite.api.delete(f"{APP}/avatars/{avatar['id']}", headers=headers)).status_code == 404
    balance = await suite.balance(headers)
    assert balance["balance"] == 90  # deleting is free and refunds nothing


async def test_project_delete_cascades_to_avatars_objects_and_media(suite, spy):
    user, headers = suite.user()
    doomed, kept = await suite.project(headers), await suite.project(headers)
    victims = [await suite.created(headers, doomed, jpeg(64, 64)) for _ in range(2)]
    survivor = await suite.created(headers, kept, jpeg(64, 64))
    response = await suite.api.delete(f"{APP}/projects/{doomed}", headers=headers)
    assert response.status_code == 200

    async def cascaded():
        return await suite.rows(user) == 1 and len(await suite.objects(user)) == 2

    await eventually(cascaded)
    for victim in victims:
        assert (await suite.api.get(victim["baseImageUrl"])).status_code == 404
        assert (await suite.api.get(f"{APP}/avatars/{victim['id']}", headers=headers)).status_code == 404
    assert (await suite.api.get(survivor["baseImageUrl"])).status_code == 200
    deleted = await spy.wait_for("avatar.deleted", count=2)
    assert sorted(e["subject"] for e in deleted if e["data"]["projectId"] == doomed) == sorted(v["id"] for v in victims)


def usage_envelope(user_id: str, avatar_id: str, usage_id: str, used_at: datetime, event_id: str = "") -> bytes:
    return json.dumps(
        {
            "id": event_id or new_id(),
            "type": "usage.recorded",
            "version": 1,
            "source": "usage",
            "time": used_at.isoformat(),
            "subject": avatar_id,
            "userId": user_id,
            "data": {
                "usageId": usage_id,
                "avatarId": avatar_id,
                "appId": "pose-generator",
                "action": "generate_pose",
                "usedAt": used_at.isoformat(),
            },
        }
    ).encode()


async def test_usage_recorded_counts_each_usage_once(suite):
    user, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg())
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    same_event = new_id()
    for body in (
        usage_envelope(user, avatar["id"], "usage-1", late, event_id=same_event),
        usage_envelope(user, avatar["id"], "usage-1", late, event_id=same_event),  # redelivery
        usage_envelope(user, avatar["id"], "usage-1", late),  # same usage, republished
        usage_envelope(user, avatar["id"], "usage-2", early),  # older use arriving later
        usage_envelope("someone-else", avatar["id"], "usage-3", late),  # not the owner's avatar
    ):
        await publish_raw(suite.settings, "usage.recorded", body)
    url = f"{APP}/avatars/{avatar['id']}"

    async def counted():
        got = (await suite.api.get(url, headers=headers)).json()["avatar"]
        return got["usageCount"] == 2 and got["lastUsedAt"] == "2026-01-02T00:00:00.000Z"

    await eventually(counted)
    # Barrier, not a sleep: one more usage, published after the others on the same queue (an older use, so
    # lastUsedAt stays). Once it is counted, the copies delivered before it have been handled too.
    sentinel = usage_envelope(user, avatar["id"], "usage-sentinel", early)
    await publish_raw(suite.settings, "usage.recorded", sentinel)

    async def sentinel_counted():
        got = (await suite.api.get(url, headers=headers)).json()["avatar"]
        assert got["usageCount"] >= 3, "sentinel not counted yet"
        return got

    got = await eventually(sentinel_counted)
    assert (got["usageCount"], got["lastUsedAt"]) == (3, "2026-01-02T00:00:00.000Z")


async def test_stats_totals_recent_and_top_used(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    first = await suite.created(headers, project, jpeg(64, 64), name="First")
    second = await suite.created(headers, project, jpeg(64, 64), name="Second")
    now = datetime.now(UTC)
    for n in range(3):
        await publish_raw(suite.settings, "usage.recorded", usage_envelope(user, second["id"], f"s{n}", now))
    await publish_raw(suite.settings, "usage.recorded", usage_envelope(user, first["id"], "f0", now))

    async def stats():
        response = await suite.api.get(f"{APP}/stats", headers=headers)
        assert response.status_code == 200
        return response.json()["stats"]

    async def all_counted():
        return (await stats())["totalUsage"] == 4

    await eventually(all_counted)
    got = await stats()
    assert got["totalAvatars"] == 2 and got["createdLast7Days"] == 2
    assert got["bySourceType"] == {"upload": 2, "ai_generated": 0}
    assert got["byProject"] == {project: 2}
    assert [a["id"] for a in got["recentUploads"]] == [second["id"], first["id"]]
    assert [(a["id"], a["usageCount"]) for a in got["topUsed"]] == [(second["id"], 3), (first["id"], 1)]


async def test_internal_by_projects_for_the_gateways_composition(suite):
    user, headers = suite.user()
    one, two, empty = await suite.project(headers), await suite.project(headers), await suite.project(headers)
    in_one = [await suite.created(headers, one, jpeg(32, 32)) for _ in range(3)]
    in_two = await suite.created(headers, two, jpeg(32, 32))
    token = ServiceTokens(suite.settings.service_token_secret, "gateway").token()
    params = {"userId": user, "projectIds": f"{one},{two},{empty}", "limitPerProject": 2}
    async with suite.direct() as avatars:
        response = await avatars.get(
            "/internal/avatars/by-projects", params=params, headers={SERVICE_TOKEN_HEADER: token}
        )
        assert response.status_code == 200
        grouped = response.json()["avatars"]
        assert [a["id"] for a in grouped[one]] == [in_one[2]["id"], in_one[1]["id"]]
        assert [a["id"] for a in grouped[two]] == [in_two["id"]]
        assert grouped[empty] == []
        assert grouped[one][0]["thumbnailUrl"].startswith("/media/")
        other = await avatars.get(
            "/internal/avatars/by-projects",
            params={**params, "userId": "intruder"},
            headers={SERVICE_TOKEN_HEADER: token},
        )
        assert other.json()["avatars"] == {one: [], two: [], empty: []}
        unauthenticated = await avatars.get("/internal/avatars/by-projects", params=params, headers=headers)
        assert unauthenticated.status_code == 401
    assert (await suite.api.get("/internal/avatars/by-projects", params=params, headers=headers)).status_code == 404


async def test_sweeper_removes_only_old_unreferenced_objects(suite):
    user, headers = suite.user()
    avatar = await suite.created(headers, await suite.project(headers), jpeg())
    stray = f"avatars/{'f' * 24}/{new_id()}/original.jpg"
    await suite.storage.put(stray, b"left behind by a crash")
    assert await suite.janitor.sweep_orphans() == 0  # too young: might belong to an upload still committing
    later = datetime.now(UTC) + timedelta(seconds=suite.settings.orphan_grace_seconds + 60)
    assert await suite.janitor.sweep_orphans(now=later) >= 1
    assert await suite.storage.head(stray) is None
    assert len(await suite.objects(user)) == 2
    assert (await suite.api.get(avatar["baseImageUrl"])).status_code == 200


async def test_upload_that_loses_the_race_with_its_project_deletion_leaves_nothing(suite):
    """The ownership check passed, then the project's deletion was handled before the avatar committed: the
    upload must fail like an upload to a missing project, with no row, no object and no charge."""
    from lumiku_common.db import utcnow
    from lumiku_common.messaging.events import Envelope

    user, headers = suite.user()
    project = await suite.project(headers)
    # The deletion as the avatars service sees it; the projects service still answers the ownership check.
    deleted = Envelope(
        type="project.deleted", source="projects", time=utcnow(), user_id=user, data={"projectId": project}
    )
    await publish_raw(suite.settings, "project.deleted", deleted.model_dump_json(by_alias=True).encode())

    async def tombstoned() -> bool:
        async with suite.avatars_app.state.db.sessions() as session:
            found = await session.scalar(text("SELECT 1 FROM deleted_projects WHERE project_id = :p"), {"p": project})
        return found is not None

    await eventually(tombstoned)
    response = await suite.upload(headers, project, jpeg())
    assert (response.status_code, response.json()) == (404, {"error": "Project not found"})
    await suite.assert_untouched(user, headers)


async def test_sweeper_removes_what_killed_uploads_left_behind(suite):
    """A SIGKILLed upload leaves its write-then-rename temporary (megabytes), which no listing shows."""
    from pathlib import Path

    from lumiku_common.storage import FilesystemStorage

    assert isinstance(suite.storage, FilesystemStorage)
    directory = suite.storage.root / f"avatars/{'e' * 24}/{new_id()}"
    await asyncio.to_thread(directory.mkdir, parents=True)
    temporary = directory / ".tmp-0123456789abcdef"
    await asyncio.to_thread(temporary.write_bytes, b"\0" * 3 * 1024 * 1024)
    assert await suite.janitor.sweep_orphans() == 0  # young: its upload may still be writing
    assert await asyncio.to_thread(Path.exists, temporary)
    later = datetime.now(UTC) + timedelta(seconds=suite.settings.orphan_grace_seconds + 60)
    assert await suite.janitor.sweep_orphans(now=later) >= 1
    assert not await asyncio.to_thread(Path.exists, directory)


async def test_a_change_racing_the_avatars_deletion_is_404_not_500(suite):
    """A delete (another request, or a project's cascade) commits while an update or delete of the same avatar
    is under way: the late one answers 404, never 500 (it used to find the row, then update none of it)."""
    _, headers = suite.user()
    project_id = await suite.project(headers)
    for method, kwargs in (("put", {"json": {"name": "Late"}}), ("delete", {})):
        avatar = await suite.created(headers, project_id, jpeg())
        async with suite.avatars_app.state.db.unit_of_work() as session:
            await session.execute(text("DELETE FROM avatars WHERE id = :id"), {"id": avatar["id"]})
            late = asyncio.create_task(
                getattr(suite.api, method)(f"{APP}/avatars/{avatar['id']}", headers=headers, **kwargs)
            )
            await asyncio.sleep(0.5)  # the late request is now waiting on the row this transaction deletes
        response = await late
        assert response.status_code == 404, (method, response.text)
        assert response.json() == {"error": "Avatar not found"}
