"""Money under faults: every avatar ever made is paid (15 for a job's first, 10 for each further one), and
nothing else is, whatever dies or runs late. Each sequence here once left an avatar free."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
from generation_support import APP, MODEL, Suite
from sqlalchemy import text

from lumiku_avatars.workflows import AvatarWorkflows
from lumiku_common.clients.avatars import GeneratedAvatarRequest, ImageRefused
from lumiku_common.errors import ServiceUnavailable
from lumiku_common.ids import new_id
from lumiku_common.storage import StorageUnavailable
from lumiku_devtools.testing import HeldFirstCall, eventually
from lumiku_generation import service
from lumiku_generation.drawing import draw_png
from lumiku_generation.repository import GenerationRepository
from lumiku_generation.workflows import GenerationWorkflows


async def test_an_image_the_provider_answers_after_the_holds_expired_is_not_stored_unpaid(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider call that starts just before the deadline (holds' expiry - margin) and outlasts the margin
    (retries, 503 "loading" waits, a fallback model: minutes in production against a 120 s margin) answers after
    the hold expired. Its image is not made an avatar (credits would refuse the capture of work done after the
    expiry): the image fails as timed out and its hold is released."""
    monkeypatch.setattr(suite.settings, "hold_ttl_seconds", 3)
    monkeypatch.setattr(suite.settings, "hold_margin_seconds", 1)  # deadline: 2 s after submitting
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "loading:1", "loading:1", "loading:1", "loading:1")  # ~4 s, then an image
    response = await suite.generate(headers, project_id, count=1, prefer_async=True)
    assert response.status_code == 202, response.text
    job = await suite.finished(headers, response.json()["generation"]["id"], timeout=30)
    assert (job["status"], job["error"], job["charged"], job["refunded"]) == ("failed", "generation timed out", 0, 15)
    assert await suite.avatars(user_id) == []
    assert (await suite.balance(headers))["balance"] == 100


async def test_a_cancel_does_not_release_the_hold_of_an_avatar_whose_creation_is_still_in_flight(
    suite: Suite,
) -> None:
    """A worker's create_generated request is with avatars (slow: decoding, the decode budget) when the worker
    dies or its client times out; the job's row lock goes with its transaction. The user cancels: the cancel
    settles the image with avatars (not an avatar, and now never one) before releasing its hold, so when the dead
    worker's request gets to its commit it is refused, instead of making an avatar whose capture credits would
    ignore (the hold released)."""
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    job_id, request = await _stored_by_a_vanished_worker(suite, user_id, headers, project_id)
    canceled = await suite.api.post(f"{APP}/generations/{job_id}/cancel", headers=headers)
    assert canceled.status_code == 200, canceled.text
    # ... and now avatars finishes the dead worker's request (idempotent on the image id: it is the first).
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    with pytest.raises(ImageRefused):  # the cancel gave the image up: the late create makes nothing
        await flows.avatars.create_generated(request)
    assert canceled.json()["generation"]["refunded"] == 15
    assert await suite.avatars(user_id) == []
    assert (await suite.balance(headers))["balance"] == 100
    assert await flows.avatars.settle_generated(user_id, project_id, request.avatar_id) is None  # still given up


async def test_a_failed_retry_of_an_image_in_flight_leaves_the_objects_of_the_avatar_it_raced(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's create_generated request is slow at avatars (the decode budget) and its client gives up
    (504 after 10 s); the job's next run asks again for the same image while the first request still runs. The
    retry fails (the store refuses a write: throttling) and undoes its objects; the first request then commits
    and pays. That avatar must keep its images: both requests wrote their objects under the same keys (the image's
    id), so the retry's undo deleted the objects of the avatar that was about to commit, and was then paid for."""
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    job_id, request = await _stored_by_a_vanished_worker(suite, user_id, headers, project_id)
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    storage = suite.avatars_app.state.parts[AvatarWorkflows].storage
    stored = HeldFirstCall(storage, "put", monkeypatch)  # the first request: its objects written, not committed
    first = asyncio.create_task(flows.avatars.create_generated(request))
    await asyncio.wait_for(stored.reached.wait(), 20)
    writing = storage.put

    async def refused(key: str, data: bytes) -> Any:
        raise StorageUnavailable()

    monkeypatch.setattr(storage, "put", refused)
    with pytest.raises(ServiceUnavailable):  # the retry fails and undoes what it wrote
        await flows.avatars.create_generated(request)
    monkeypatch.setattr(storage, "put", writing)
    stored.go.set()
    made = await first
    assert made.created
    async with suite.avatars_app.state.db.unit_of_work() as session:
        keys = (
            await session.execute(
                text("SELECT base_image_key, thumbnail_key FROM avatars WHERE id = :id"), {"id": request.avatar_id}
            )
        ).one()
    assert [key for key in keys if await storage.head(key) is None] == []  # the paid avatar has its images
    canceled = await suite.api.post(f"{APP}/generations/{job_id}/cancel", headers=headers)
    assert canceled.json()["generation"]["charged"] == 15  # settled with avatars: the image became that avatar
    assert (await suite.balance(headers))["balance"] == 85


async def test_a_retry_that_loses_the_race_for_an_image_leaves_no_objects_behind(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests for the same image at avatars (as above), the retry committing first: the first one's insert
    then conflicts and it answers the avatar the retry made. The objects it wrote are referenced by no avatar and
    are removed by its undo (the avatar's own are kept): nothing is left for the orphan sweeper an hour later."""
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    job_id, request = await _stored_by_a_vanished_worker(suite, user_id, headers, project_id)
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    storage = suite.avatars_app.state.parts[AvatarWorkflows].storage
    stored = HeldFirstCall(storage, "put", monkeypatch)
    first = asyncio.create_task(flows.avatars.create_generated(request))
    await asyncio.wait_for(stored.reached.wait(), 20)
    retried = await flows.avatars.create_generated(request)  # commits while the first one waits
    assert retried.created
    stored.go.set()
    raced = await first
    assert not raced.created and raced.avatar["id"] == request.avatar_id
    async with suite.avatars_app.state.db.unit_of_work() as session:
        keys = (
            await session.execute(
                text("SELECT base_image_key, thumbnail_key FROM avatars WHERE id = :id"), {"id": request.avatar_id}
            )
        ).one()
    prefix = keys[0].rsplit("/", 2)[0] + "/"  # the user's objects
    assert sorted([info.key async for info in storage.list(prefix)]) == sorted(keys)
    canceled = await suite.api.post(f"{APP}/generations/{job_id}/cancel", headers=headers)
    assert canceled.json()["generation"]["charged"] == 15
    assert (await suite.balance(headers))["balance"] == 85


async def _stored_by_a_vanished_worker(
    suite: Suite, user_id: str, headers: dict[str, str], project_id: str
) -> tuple[str, GeneratedAvatarRequest]:
    """A job of one image whose worker died storing it (hold 0 assigned, its lease still looking alive), and the
    create_generated request that worker had sent to avatars."""
    suite.fake.delay = 1.0
    job_id = (await suite.generate(headers, project_id, count=1, prefer_async=True)).json()["generation"]["id"]
    await eventually(lambda: asyncio.sleep(0, len(suite.fake.calls) >= 1))
    png = draw_png("in flight", 1, suite.settings.generation_width, suite.settings.generation_height)
    async with suite.generation_app.state.db.unit_of_work() as session:
        await session.execute(
            text(
                "UPDATE generations SET lease_owner = 'vanished-worker', lease_until = now() + interval '1 hour' "
                "WHERE id = :id"
            ),
            {"id": job_id},
        )
        await session.execute(
            text(
                "UPDATE generation_images SET status = 'storing', hold_index = 0, data = CAST(:png AS bytea) "
                "WHERE generation_id = :id"
            ),
            {"id": job_id, "png": png},
        )
        row = (
            await session.execute(
                text(
                    "SELECT i.id, i.seed, g.hold_ids AS holds FROM generation_images i "
                    "JOIN generations g ON g.id = i.generation_id WHERE i.generation_id = :id"
                ),
                {"id": job_id},
            )
        ).one()
    request = GeneratedAvatarRequest.model_validate(
        {
            "avatarId": row.id,
            "userId": user_id,
            "projectId": project_id,
            "holdId": row.holds[0],
            "name": "Siti",
            "generationPrompt": "Professional woman with hijab, smiling",
            "seedUsed": row.seed,
            "imageBase64": base64.b64encode(png).decode(),
        }
    )
    return job_id, request


async def _made_then_deleted(suite: Suite) -> tuple[str, dict[str, str], str, GeneratedAvatarRequest]:
    """A job whose worker made the image's avatar and vanished before it heard so; the user then deleted the
    avatar. The job's money still says hold 0 is in use."""
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    job_id, request = await _stored_by_a_vanished_worker(suite, user_id, headers, project_id)
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    assert (await flows.avatars.create_generated(request)).created
    deleted = await suite.api.delete(f"{APP}/avatars/{request.avatar_id}", headers=headers)
    assert deleted.status_code == 200, deleted.text
    return job_id, headers, user_id, request


async def test_a_retried_create_of_an_avatar_deleted_since_does_not_bring_it_back(suite: Suite) -> None:
    """The retry answers the avatar as it was (its job records it made and paid): it made it again before, with
    the same id, undoing the user's deletion of an avatar whose uses the usage service then refused."""
    job_id, headers, user_id, request = await _made_then_deleted(suite)
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    retried = await flows.avatars.create_generated(request)
    assert not retried.created and retried.avatar["id"] == request.avatar_id
    assert await suite.avatars(user_id) == []
    missing = await suite.api.get(f"{APP}/avatars/{request.avatar_id}", headers=headers)
    assert missing.status_code == 404
    canceled = await suite.api.post(f"{APP}/generations/{job_id}/cancel", headers=headers)
    assert (canceled.json()["generation"]["charged"], canceled.json()["generation"]["refunded"]) == (15, 0)
    assert (await suite.balance(headers))["balance"] == 85


async def test_a_create_in_flight_while_its_twin_made_the_avatar_and_it_was_deleted_makes_nothing(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request is still writing its objects when its retry makes the avatar and the user deletes it:
    the first one's insert then meets no avatar of that id, and must still not make it again."""
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    job_id, request = await _stored_by_a_vanished_worker(suite, user_id, headers, project_id)
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    stored = HeldFirstCall(suite.avatars_app.state.parts[AvatarWorkflows].storage, "put", monkeypatch)
    first = asyncio.create_task(flows.avatars.create_generated(request))
    await asyncio.wait_for(stored.reached.wait(), 20)
    assert (await flows.avatars.create_generated(request)).created
    deleted = await suite.api.delete(f"{APP}/avatars/{request.avatar_id}", headers=headers)
    assert deleted.status_code == 200, deleted.text
    stored.go.set()
    raced = await first
    assert not raced.created and raced.avatar["id"] == request.avatar_id
    assert await suite.avatars(user_id) == []
    canceled = await suite.api.post(f"{APP}/generations/{job_id}/cancel", headers=headers)
    assert canceled.json()["generation"]["charged"] == 15
    assert (await suite.balance(headers))["balance"] == 85


async def test_settling_an_image_whose_avatar_was_deleted_since_counts_it_made_and_paid(suite: Suite) -> None:
    """A cancel settles the image with avatars: the avatar was made (and its hold captured), so the job says
    charged 15, as the ledger does. It said refunded 15 before, the avatar being gone."""
    job_id, headers, user_id, _ = await _made_then_deleted(suite)
    canceled = await suite.api.post(f"{APP}/generations/{job_id}/cancel", headers=headers)
    assert canceled.status_code == 200, canceled.text
    assert (canceled.json()["generation"]["charged"], canceled.json()["generation"]["refunded"]) == (15, 0)
    assert (await suite.balance(headers))["balance"] == 85
    assert await suite.avatars(user_id) == []


async def test_settling_an_image_that_became_an_avatar_answers_with_that_avatar(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    response = await suite.generate(headers, project_id, count=1)
    assert response.status_code == 201, response.text
    [avatar_id] = response.json()["generation"]["avatarIds"]
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    settled = await flows.avatars.settle_generated(user_id, project_id, avatar_id)
    assert settled is not None and settled.avatar["id"] == avatar_id
    assert [a["id"] for a in await suite.avatars(user_id)] == [avatar_id]


class _CommitAckLost:
    """The generation database as a worker sees it, except that the submit's commit is acknowledged with an error
    once (the connection dropped after COMMIT reached the server: the job is committed, the caller is not told)."""

    def __init__(self, db: Any) -> None:
        self._db, self.armed = db, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[Any]:
        async with self._db.unit_of_work() as session:
            yield session
        if self.armed and any(f.function == "submit" for f in inspect.stack()):
            self.armed = False
            raise ConnectionResetError("connection lost after COMMIT")


async def test_a_submit_whose_commit_is_not_acknowledged_does_not_release_the_holds_of_the_job_it_made(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's commit happened but its acknowledgement was lost (the connection dropped after COMMIT, or a
    cancellation mid-COMMIT): the submit looks the job up before releasing anything, so the job runs on the holds
    it committed with and its avatar is paid. (Uploads handle the same case: `_undo` looks the avatar up.)"""
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    monkeypatch.setattr(flows, "db", _CommitAckLost(flows.db))
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    await suite.generate(headers, project_id, count=1, prefer_async=True)  # 500: the commit looks failed

    async def made() -> list[dict[str, Any]] | None:
        return await suite.avatars(user_id) or None

    avatars = await eventually(made, timeout=20)  # the job ran anyway
    await asyncio.sleep(1.0)  # its capture reaches credits
    balance = (await suite.balance(headers))["balance"]
    assert (len(avatars), balance) == (1, 85), f"{len(avatars)} avatar(s), balance {balance}"


async def test_asking_whether_a_submit_committed_waits_for_its_transaction_to_end(suite: Suite) -> None:
    """A COMMIT whose answer was lost may still be landing when the submit asks: the question waits on the
    submission's lock (taken first by the creating transaction) instead of reading "not there" too early."""
    db = suite.generation_app.state.db
    user_id, job_id = "someone", new_id()
    async with db.unit_of_work() as creating:
        await GenerationRepository(creating).lock_submission(job_id)

        async def asked() -> bool:
            async with db.unit_of_work() as session:
                return await service.submitted(session, user_id, job_id)

        probe = asyncio.create_task(asked())
        await asyncio.sleep(0.5)
        assert not probe.done()  # waiting for the creating transaction's outcome
    assert await probe is False  # it ended without a job
