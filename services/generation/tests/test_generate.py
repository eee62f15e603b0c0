"""Generate through the gateway: exact charges, 402, the provider's behaviours, partial success, cancel."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from generation_support import APP, FALLBACK, MODEL, Suite
from sqlalchemy import text

from lumiku_common.messaging.events import RunGeneration, envelope_for
from lumiku_devtools.testing import HeldFirstCall, eventually, publish_raw
from lumiku_generation.prompts import NEGATIVE_PROMPT, enhance
from lumiku_generation.workflows import GenerationWorkflows


async def test_count_one_is_charged_15_and_returns_the_avatar(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    response = await suite.generate(headers, project_id, count=1, gender="female", style="professional")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True and body["message"] == "Avatar generated successfully"
    avatar = body["avatar"]
    assert avatar["sourceType"] == "ai_generated" and body["avatars"] == [avatar]
    assert avatar["generationPrompt"] == "Professional woman with hijab, smiling"
    assert (avatar["gender"], avatar["style"], avatar["name"]) == ("female", "professional", "Siti")
    generation = body["generation"]
    assert generation["status"] == "succeeded" and generation["produced"] == 1
    assert (generation["cost"], generation["charged"], generation["refunded"]) == (15, 15, 0)
    assert generation["avatarIds"] == [avatar["id"]]
    assert (await suite.balance(headers))["balance"] == 85
    usage = [e for e in await suite.ledger(headers) if e["type"] == "usage"]
    assert len(usage) == 1 and usage[0]["referenceId"] == generation["id"] and usage[0]["amount"] == -15
    # The request the provider got: the spec's prompt enhancement and negative prompt, the configured model and
    # size, the bearer token, and the seed that the avatar records.
    [call] = suite.fake.calls
    assert call.model == MODEL and call.authorization == "Bearer hf_test_token"
    assert call.body["inputs"] == enhance("Professional woman with hijab, smiling")
    parameters = call.body["parameters"]
    assert parameters["negative_prompt"] == NEGATIVE_PROMPT
    assert (parameters["width"], parameters["height"], parameters["num_inference_steps"]) == (256, 256, 30)
    assert parameters["guidance_scale"] == 3.5
    assert [a["seed_used"] for a in await suite.avatars(user_id)] == [parameters["seed"]] == [avatar["seedUsed"]]


async def test_count_five_is_charged_55_each_image_with_its_own_seed(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    response = await suite.generate(headers, project_id, count=5)
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["avatars"]) == 5 and body["avatar"] == body["avatars"][0]
    assert (body["generation"]["charged"], body["generation"]["refunded"]) == (55, 0)
    assert (await suite.balance(headers))["balance"] == 45
    usage = [e for e in await suite.ledger(headers) if e["type"] == "usage"]
    assert sorted(-e["amount"] for e in usage) == [10, 10, 10, 10, 15]
    assert {e["referenceId"] for e in usage} == {body["generation"]["id"]}
    sent = sorted(c.body["parameters"]["seed"] for c in suite.fake.calls)
    assert len(set(sent)) == 5
    assert sorted(a["seed_used"] for a in await suite.avatars(user_id)) == sent


async def test_insufficient_credits_is_402_and_nothing_is_queued(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    assert (await suite.generate(headers, project_id, count=5)).status_code == 201  # 45 left
    calls = len(suite.fake.calls)
    response = await suite.generate(headers, project_id, count=5)
    assert response.status_code == 402, response.text
    assert response.json() == {"error": "Insufficient credits", "required": 55, "current": 45}
    listed = (await suite.api.get(f"{APP}/generations", headers=headers)).json()
    assert listed["pagination"]["total"] == 1
    await asyncio.sleep(0.3)
    assert len(suite.fake.calls) == calls
    balance = await suite.balance(headers)
    assert (balance["balance"], balance["available"]) == (45, 45)


async def test_another_users_project_is_404_nothing_charged_provider_never_called(suite: Suite) -> None:
    _, owner = suite.user()
    project_id = await suite.project(owner)
    _, other = suite.user()
    response = await suite.generate(other, project_id)
    assert response.status_code == 404 and response.json() == {"error": "Project not found"}
    assert suite.fake.calls == []
    assert (await suite.balance(other))["balance"] == 100


async def test_validation_as_spec_13_2(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    for fields, path in (
        ({"prompt": "too short"}, "prompt"),
        ({"count": 6}, "count"),
        ({"count": 0}, "count"),
        ({"count": "2"}, "count"),
        ({"count": 2.5}, "count"),
        ({"style": "anime"}, "style"),
        ({"name": ""}, "name"),
    ):
        response = await suite.generate(headers, project_id, **fields)
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["details"][0]["path"] == [path], response.text
    response = await suite.generate(headers, project_id, colour="red")
    assert response.json()["details"][0]["code"] == "unrecognized_keys"
    assert suite.fake.calls == []


async def test_model_loading_503_is_waited_out(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "loading:0.4", "ok")
    started = time.monotonic()
    response = await suite.generate(headers, project_id)
    assert response.status_code == 201, response.text
    calls = suite.fake.calls
    assert [c.answer for c in calls] == ["loading:0.4", "ok"]
    assert calls[1].at - calls[0].at >= 0.38  # the estimated_time was honoured
    assert time.monotonic() - started >= 0.4
    assert (await suite.balance(headers))["balance"] == 85


async def test_rate_limit_429_honours_retry_after(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "rate:0.5", "ok")
    response = await suite.generate(headers, project_id)
    assert response.status_code == 201, response.text
    calls = suite.fake.calls
    assert [c.answer for c in calls] == ["rate:0.5", "ok"] and calls[1].at - calls[0].at >= 0.48
    assert (await suite.balance(headers))["balance"] == 85


async def test_server_errors_and_timeouts_are_retried(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "error", "hang:3", "ok")  # the client gives up after 2 s
    response = await suite.generate(headers, project_id)
    assert response.status_code == 201, response.text
    assert [c.answer for c in suite.fake.calls] == ["error", "hang:3", "ok"]


async def test_the_fallback_model_when_the_primary_keeps_failing(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "error", "error", "error")
    response = await suite.generate(headers, project_id)
    assert response.status_code == 201, response.text
    fallback = suite.fake.calls_to(FALLBACK)
    assert len(suite.fake.calls_to(MODEL)) == 3 and len(fallback) == 1
    parameters = fallback[0].body["parameters"]
    assert (parameters["num_inference_steps"], parameters["guidance_scale"]) == (4, 0.0)
    assert (await suite.balance(headers))["balance"] == 85


async def test_permanent_failure_is_502_and_everything_released(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "bad")
    response = await suite.generate(headers, project_id)
    assert response.status_code == 502, response.text
    assert response.json() == {"error": "AI generation failed: Input validation error: `inputs` must be a prompt"}
    assert len(suite.fake.calls) == 1  # a 4xx is not retried, and no fallback can fix the request
    assert (await suite.balance(headers))["balance"] == 100
    assert await suite.avatars(user_id) == []
    [job] = (await suite.api.get(f"{APP}/generations", headers=headers)).json()["generations"]
    assert (job["status"], job["charged"], job["refunded"]) == ("failed", 0, 15)


async def test_an_answer_that_is_no_image_fails(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "text")
    response = await suite.generate(headers, project_id)
    assert response.status_code == 502
    assert response.json()["error"] == "AI generation failed: the provider answered without an image"
    assert (await suite.balance(headers))["balance"] == 100


async def test_retries_exhausted_on_both_models_is_502(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, *["error"] * 3)
    suite.fake.script(FALLBACK, *["error"] * 3)
    response = await suite.generate(headers, project_id)
    assert response.status_code == 502, response.text
    assert response.json() == {"error": "AI generation failed: Internal server error"}
    assert (len(suite.fake.calls_to(MODEL)), len(suite.fake.calls_to(FALLBACK))) == (3, 3)  # bounded
    assert (await suite.balance(headers))["balance"] == 100


async def test_three_of_five_failing_is_partial_charged_25_released_30(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "bad", "bad", "bad")
    response = await suite.generate(headers, project_id, count=5)
    assert response.status_code == 201, response.text
    body = response.json()
    generation = body["generation"]
    assert generation["status"] == "partially_succeeded" and generation["produced"] == 2
    assert (generation["cost"], generation["charged"], generation["refunded"]) == (55, 25, 30)
    assert len(body["avatars"]) == 2 and len(await suite.avatars(user_id)) == 2
    assert (await suite.balance(headers))["balance"] == 75
    usage = [e for e in await suite.ledger(headers) if e["type"] == "usage"]
    assert sorted(-e["amount"] for e in usage) == [10, 15]


async def test_respond_async_is_202_with_location_then_the_job_can_be_read(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.delay = 0.3
    response = await suite.generate(headers, project_id, count=2, prefer_async=True)
    assert response.status_code == 202, response.text
    generation = response.json()["generation"]
    assert generation["status"] in ("queued", "running") and generation["count"] == 2
    assert response.headers["location"] == f"{APP}/generations/{generation['id']}"
    job = await suite.finished(headers, generation["id"])
    assert (job["status"], job["produced"], job["charged"]) == ("succeeded", 2, 25)
    assert job["startedAt"] and job["finishedAt"] and len(job["avatarIds"]) == 2
    listed = (await suite.api.get(f"{APP}/generations?limit=1", headers=headers)).json()
    assert listed["generations"][0]["id"] == generation["id"] and listed["pagination"]["total"] == 1


async def test_another_users_job_is_404(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    job_id = (await suite.generate(headers, project_id)).json()["generation"]["id"]
    _, other = suite.user()
    for method, path in (
        ("GET", f"{APP}/generations/{job_id}"),
        ("GET", f"{APP}/generations/{job_id}/events"),
        ("POST", f"{APP}/generations/{job_id}/cancel"),
    ):
        response = await suite.api.request(method, path, headers=other)
        assert response.status_code == 404 and response.json() == {"error": "Generation not found"}
    assert (await suite.job(headers, job_id))["status"] == "succeeded"


async def test_cancel_while_the_provider_is_slow_saves_and_charges_nothing(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.delay = 1.5
    job_id = (await suite.generate(headers, project_id, count=2, prefer_async=True)).json()["generation"]["id"]
    await eventually(lambda: asyncio.sleep(0, len(suite.fake.calls) >= 1))  # the provider is working on it
    response = await suite.api.post(f"{APP}/generations/{job_id}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["generation"]["status"] == "canceled"
    await asyncio.sleep(2.5)  # the provider answers meanwhile
    job = await suite.job(headers, job_id)
    assert (job["status"], job["produced"], job["charged"], job["refunded"]) == ("canceled", 0, 0, 25)
    assert await suite.avatars(user_id) == []
    assert (await suite.balance(headers))["balance"] == 100
    again = await suite.api.post(f"{APP}/generations/{job_id}/cancel", headers=headers)
    assert again.status_code == 200 and again.json()["generation"]["status"] == "canceled"


async def test_a_duplicate_job_message_never_calls_the_provider_again(suite: Suite) -> None:
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    job_id = (await suite.generate(headers, project_id, count=2)).json()["generation"]["id"]
    assert len(suite.fake.calls) == 2
    for _ in range(2):
        envelope = envelope_for(
            RunGeneration(generation_id=job_id),
            source="test",
            time=datetime.now(UTC),
            user_id=user_id,
            subject=job_id,
            correlation_id=None,
            causation_id=None,
        )
        await publish_raw(
            suite.settings, "generation.run", envelope.model_dump_json(by_alias=True).encode(), envelope.id
        )
    await asyncio.sleep(1.0)
    assert len(suite.fake.calls) == 2
    job = await suite.job(headers, job_id)
    assert (job["status"], job["produced"], job["charged"]) == ("succeeded", 2, 25)
    assert len(await suite.avatars(user_id)) == 2
    assert (await suite.balance(headers))["balance"] == 75


async def gone(suite: Suite, headers: dict[str, str], job_id: str) -> bool:
    return (await suite.api.get(f"{APP}/generations/{job_id}", headers=headers)).status_code == 404


async def test_deleting_the_project_cancels_its_jobs_releases_and_forgets_them(suite: Suite) -> None:
    """Original defect #13: a deleted project's generations stayed. A running job is canceled, its holds are
    released, and once settled it is deleted (images and events with it), from the list too."""
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.delay = 1.0
    job_id = (await suite.generate(headers, project_id, count=3, prefer_async=True)).json()["generation"]["id"]
    await eventually(lambda: asyncio.sleep(0, len(suite.fake.calls) >= 1))
    assert (await suite.api.delete(f"{APP}/projects/{project_id}", headers=headers)).status_code == 200
    await eventually(lambda: gone(suite, headers, job_id), what="the canceled job deleted", timeout=20)
    await asyncio.sleep(1.5)
    assert await suite.avatars(user_id) == []
    assert (await suite.balance(headers))["balance"] == 100
    assert (await suite.api.get(f"{APP}/generations", headers=headers)).json()["generations"] == []


async def test_a_job_submitted_while_its_project_is_deleted_is_refused_and_never_runs(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Projects said the project is the caller's; before the job committed, the project was deleted and this
    service handled `project.deleted` (canceling the project's jobs, none yet). A job committed after that cascade
    ran anyway in a project that no longer exists: the provider paid for nothing, and its avatar made and charged
    whenever avatars had not handled the deletion yet (then deleted with the project). It is refused like a
    project that is gone (404), its holds released, nothing asked of the provider."""
    user_id, headers = suite.user()
    project_id = await suite.project(headers)
    flows: GenerationWorkflows = suite.generation_app.state.parts[GenerationWorkflows]
    checked = HeldFirstCall(flows.projects, "ensure_owned", monkeypatch)
    submitting = asyncio.create_task(suite.generate(headers, project_id, count=2, prefer_async=True))
    await asyncio.wait_for(checked.reached.wait(), 20)
    assert (await suite.api.delete(f"{APP}/projects/{project_id}", headers=headers)).status_code == 200
    await eventually(lambda: _tombstoned(suite, project_id), what="generation handled project.deleted")
    checked.go.set()
    response = await submitting
    assert response.status_code == 404, response.text
    assert response.json() == {"error": "Project not found"}
    await asyncio.sleep(1.0)
    assert suite.fake.calls == []
    assert (await suite.api.get(f"{APP}/generations", headers=headers)).json()["generations"] == []
    assert await suite.avatars(user_id) == []
    assert (await suite.balance(headers))["balance"] == 100


async def _tombstoned(suite: Suite, project_id: str) -> bool:
    async with suite.generation_app.state.db.sessions() as session:
        found = await session.scalar(
            text("SELECT count(*) FROM deleted_projects WHERE project_id = :p"), {"p": project_id}
        )
    return bool(found)


async def test_a_deleted_projects_finished_jobs_are_forgotten_and_other_projects_kept(suite: Suite) -> None:
    _, headers = suite.user()
    doomed, kept = await suite.project(headers), await suite.project(headers)
    finished = (await suite.generate(headers, doomed)).json()["generation"]["id"]
    other = (await suite.generate(headers, kept)).json()["generation"]["id"]
    assert (await suite.api.delete(f"{APP}/projects/{doomed}", headers=headers)).status_code == 200
    await eventually(lambda: gone(suite, headers, finished), what="the finished job deleted", timeout=20)
    listed = (await suite.api.get(f"{APP}/generations", headers=headers)).json()["generations"]
    assert [g["id"] for g in listed] == [other]
    assert (await suite.balance(headers))["balance"] == 70  # what was charged stays charged
