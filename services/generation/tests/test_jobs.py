"""The job machinery through the gateway: the synchronous wait running out, the per-user concurrency limit, a
job whose worker vanished picked up again once its lease expires, and the live event stream (keepalives while
nothing happens, resuming mid-job with Last-Event-ID)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from generation_support import APP, Suite
from sqlalchemy import text

from lumiku_devtools.testing import eventually, served
from lumiku_generation import service
from lumiku_generation.drawing import draw_png


async def test_the_sync_wait_running_out_is_202_with_the_job_and_location(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite.settings, "generation_sync_wait_s", 0.3)
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.delay = 1.5
    response = await suite.generate(headers, project_id, count=1)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"success", "generation"} and body["success"] is True
    generation = body["generation"]
    assert generation["status"] in ("queued", "running") and generation["produced"] == 0
    assert response.headers["location"] == f"{APP}/generations/{generation['id']}"
    job = await suite.finished(headers, generation["id"])  # the job goes on without the waiting request
    assert (job["status"], job["produced"], job["charged"]) == ("succeeded", 1, 15)
    assert (await suite.balance(headers))["balance"] == 85


async def test_a_user_runs_two_jobs_at_once_the_third_waits_queued_then_runs(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.delay = 1.2
    ids = []
    for _ in range(3):
        response = await suite.generate(headers, project_id, count=1, prefer_async=True)
        assert response.status_code == 202, response.text
        ids.append(response.json()["generation"]["id"])

    async def two_running() -> list[str] | None:
        statuses = [(await suite.job(headers, job_id))["status"] for job_id in ids]
        return statuses if sorted(statuses) == ["queued", "running", "running"] else None

    statuses = await eventually(two_running, timeout=10)
    await asyncio.sleep(0.5)  # well inside the provider's answer time: the queued one is still not asked for
    assert len(suite.fake.calls) == 2
    waiting = ids[statuses.index("queued")]
    assert (await suite.job(headers, waiting))["status"] == "queued"
    jobs = [await suite.finished(headers, job_id) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3 and len(suite.fake.calls) == 3
    # The provider never had more than two of this user's images at once.
    spans = sorted((c.at, c.answered or c.at) for c in suite.fake.calls)
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
    later = next(j for j in jobs if j["id"] == waiting)
    assert later["startedAt"] >= min(j["finishedAt"] for j in jobs if j["id"] != waiting)
    assert (await suite.balance(headers))["balance"] == 100 - 45
    assert len(await suite.avatars(user_id)) == 3
    listed = (await suite.api.get(f"{APP}/generations", headers=headers)).json()["generations"]
    assert [g["id"] for g in listed] == ids[::-1]  # newest first


async def _handed_to_a_vanished_worker(suite: Suite, headers: dict[str, str], assignments: str) -> str:
    """A running job of 2 images (the provider slow) whose lease now belongs to a worker that will never come
    back (as a SIGKILLed one), with `assignments` (SQL) made to its row."""
    project_id = await suite.project(headers)
    suite.fake.delay = 1.0
    job_id: str = (await suite.generate(headers, project_id, count=2, prefer_async=True)).json()["generation"]["id"]
    await eventually(lambda: asyncio.sleep(0, len(suite.fake.calls) >= 1))
    async with suite.generation_app.state.db.unit_of_work() as session:
        await session.execute(
            text(
                f"UPDATE generations SET lease_owner = 'vanished-worker', {assignments} "
                "WHERE id = :id AND status = 'running'"
            ),
            {"id": job_id},
        )
    return job_id


async def test_a_job_whose_worker_vanished_is_picked_up_after_its_lease_expires_and_paid_once(suite: Suite) -> None:
    """The job's lease is handed to a worker that will never come back (as a SIGKILLed one): the worker that was
    running it loses it (its images are no longer its to keep), and once the lease expires the sweep sends the job
    to the workers again; it finishes once, one charge per image."""
    user_id, headers = suite.user()
    job_id = await _handed_to_a_vanished_worker(suite, headers, "lease_until = now() + interval '1 second'")
    job = await suite.finished(headers, job_id, timeout=30)
    assert (job["status"], job["produced"], job["charged"], job["refunded"]) == ("succeeded", 2, 25, 0)
    assert len(suite.fake.calls) >= 3  # the first worker's answers were not its to keep: asked again
    async with suite.generation_app.state.db.unit_of_work() as session:
        runs = await session.scalar(text("SELECT runs FROM generations WHERE id = :id"), {"id": job_id})
    assert runs == 2
    assert len(await suite.avatars(user_id)) == 2
    assert (await suite.balance(headers))["balance"] == 75
    usage = [e for e in await suite.ledger(headers) if e["type"] == "usage"]
    assert sorted(-e["amount"] for e in usage) == [10, 15] and {e["referenceId"] for e in usage} == {job_id}


async def test_a_job_past_its_deadline_that_nobody_runs_is_failed_and_released(suite: Suite) -> None:
    """The deadline keeps every capture before the credit holds expire: a job whose worker vanished and whose
    deadline passed is not resumed but failed, its holds released, and nothing its old worker makes is kept."""
    user_id, headers = suite.user()
    past = "now() - interval '1 second'"
    job_id = await _handed_to_a_vanished_worker(suite, headers, f"lease_until = {past}, deadline = {past}")
    job = await suite.finished(headers, job_id)
    assert (job["status"], job["error"], job["produced"], job["charged"], job["refunded"]) == (
        "failed",
        "generation timed out",
        0,
        0,
        25,
    )
    await asyncio.sleep(1.5)  # the provider's answers to the old worker arrive meanwhile
    assert await suite.avatars(user_id) == []
    assert (await suite.balance(headers))["balance"] == 100
    assert len(suite.fake.calls) == 2  # never resumed


async def _leave_images(suite: Suite, job_id: str, assignments: str, where: str = "TRUE", **values: Any) -> None:
    """The job's image rows (those `where` selects) as a worker that died would have left them."""
    async with suite.generation_app.state.db.unit_of_work() as session:
        await session.execute(
            text(f"UPDATE generation_images SET {assignments} WHERE generation_id = :id AND {where}"),
            {"id": job_id, **values},
        )


async def test_a_store_cut_short_is_resolved_before_another_image_takes_a_hold(suite: Suite) -> None:
    """A worker died storing the second image (hold 0 assigned, its avatar never made) with the first image's
    bytes kept. The job's resumption finishes that store before the kept image takes a hold: when it is refused,
    the kept image pays the first image's price, so one avatar costs 15 (not the variation's 10)."""
    user_id, headers = suite.user()
    bytes_kept = draw_png("kept", 1, suite.settings.generation_width, suite.settings.generation_height)
    job_id = await _handed_to_a_vanished_worker(suite, headers, "lease_until = now() + interval '1 second'")
    await _leave_images(
        suite,
        job_id,
        "status = CASE index WHEN 0 THEN 'received' ELSE 'storing' END, "
        "hold_index = CASE index WHEN 0 THEN NULL ELSE 0 END, "
        "data = CASE index WHEN 0 THEN CAST(:kept AS bytea) ELSE CAST('not an image' AS bytea) END",
        kept=bytes_kept,
    )
    job = await suite.finished(headers, job_id, timeout=30)
    assert (job["status"], job["produced"], job["charged"], job["refunded"]) == ("partially_succeeded", 1, 15, 10)
    assert len(await suite.avatars(user_id)) == 1
    assert (await suite.balance(headers))["balance"] == 85


async def test_no_image_takes_a_hold_while_another_store_is_unresolved(suite: Suite) -> None:
    """The guard behind the ordering above: asked anyway, assigning a hold refuses and changes nothing."""
    _, headers = suite.user()
    job_id = await _handed_to_a_vanished_worker(suite, headers, "lease_until = now() + interval '1 hour'")
    await _leave_images(suite, job_id, "status = 'storing', hold_index = 0, data = CAST('x' AS bytea)", "index = 1")
    with pytest.raises(service.StoreCutShort):
        async with suite.generation_app.state.db.unit_of_work() as session:
            job = await service.lock(session, job_id)
            assert job is not None
            first = next(i for i in await service.images(session, job_id) if i.index == 0)
            await service.assign_hold(session, job, first)
    async with suite.generation_app.state.db.unit_of_work() as session:
        holds = await session.scalar(
            text("SELECT count(hold_index) FROM generation_images WHERE generation_id = :id"), {"id": job_id}
        )
    assert holds == 1


async def _read_events(
    api: httpx.AsyncClient, url: str, headers: dict[str, str], until: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The stream's events (up to the first `until`, else to its end) and how many keepalive comments came."""
    events: list[dict[str, Any]] = []
    keepalives, current = 0, {}
    async with api.stream("GET", url, headers=headers, timeout=30) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith(": keepalive"):
                keepalives += 1
            elif line.startswith(("id: ", "event: ", "data: ")):
                key, _, value = line.partition(": ")
                current[key] = value
            elif not line and current:
                data = json.loads(current.pop("data"))
                events.append({"id": int(current.pop("id")), "event": current.pop("event"), "data": data})
                if events[-1]["event"] == until:
                    break
    return events, keepalives


async def test_a_live_stream_sends_keepalives_while_idle_and_resumes_mid_job(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suite.settings, "sse_keepalive_seconds", 0.3)
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.delay = 1.5
    job_id = (await suite.generate(headers, project_id, count=2, prefer_async=True)).json()["generation"]["id"]
    url = f"{APP}/generations/{job_id}/events"
    # Over real TCP, straight to the service: the suite's in-process transports deliver a response whole.
    async with served(suite.generation_app, lifespan="off") as base, httpx.AsyncClient(base_url=base) as api:
        first, _ = await _read_events(api, url, headers, until="running")  # the client goes away mid-job
        assert [e["event"] for e in first] == ["queued", "running"]
        rest, keepalives = await _read_events(api, url, {**headers, "Last-Event-ID": str(first[-1]["id"])})
    assert keepalives >= 2  # ~1.5 s with nothing to say, a comment every 0.3 s keeps proxies from closing it
    assert [e["event"] for e in rest] == ["image", "image", "succeeded"]
    assert [e["id"] for e in first + rest] == list(range(1, 6))  # nothing lost, nothing twice
    assert rest[-1]["data"]["generation"]["charged"] == 25
