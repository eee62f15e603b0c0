"""`Idempotency-Key` on generate, through the gateway: a retry answers the job the key first submitted (waiting for
it, or 202, as the retry asks) and reserves nothing; the key with another request is 409; a refused request
leaves its key free; concurrent twins submit one job, pay once, and the others release their holds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from generation_support import APP, MODEL, Suite

from lumiku_devtools.testing import HeldFirstCall
from lumiku_generation.workflows import GenerationWorkflows

REPLAYED = "Idempotent-Replayed"
REUSED = {"error": "Idempotency key already used with a different request"}


def keyed(headers: dict[str, str], key: str | bytes) -> dict[str, Any]:
    return {**headers, "Idempotency-Key": key}


async def jobs(suite: Suite, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await suite.api.get(f"{APP}/generations", headers=headers)
    assert response.status_code == 200, response.text
    generations: list[dict[str, Any]] = response.json()["generations"]
    return generations


async def test_a_retry_with_the_key_answers_the_first_job_and_pays_once(suite: Suite) -> None:
    _, headers = suite.user()
    project = await suite.project(headers)
    first = await suite.generate(keyed(headers, "gen-1"), project)
    retry = await suite.generate(keyed(headers, "gen-1"), project)
    assert (first.status_code, retry.status_code) == (201, 201), (first.text, retry.text)
    assert REPLAYED not in first.headers and retry.headers[REPLAYED] == "true"
    assert retry.json()["generation"] == first.json()["generation"]
    assert [a["id"] for a in retry.json()["avatars"]] == [a["id"] for a in first.json()["avatars"]]
    assert len(suite.fake.calls) == 1 and len(await jobs(suite, headers)) == 1
    assert (await suite.balance(headers))["balance"] == 85


async def test_an_async_submit_retried_waits_for_the_same_job(suite: Suite) -> None:
    _, headers = suite.user()
    project = await suite.project(headers)
    queued = await suite.generate(keyed(headers, "gen-async"), project, prefer_async=True)
    assert queued.status_code == 202 and REPLAYED not in queued.headers, queued.text
    again = await suite.generate(keyed(headers, "gen-async"), project, prefer_async=True)
    assert again.status_code == 202 and again.headers[REPLAYED] == "true"
    assert again.headers["Location"] == queued.headers["Location"]
    waited = await suite.generate(keyed(headers, "gen-async"), project)
    assert (waited.status_code, waited.headers[REPLAYED]) == (201, "true"), waited.text
    assert waited.json()["generation"]["id"] == queued.json()["generation"]["id"]
    assert len(suite.fake.calls) == 1 and len(await jobs(suite, headers)) == 1
    assert (await suite.balance(headers))["balance"] == 85


@pytest.mark.parametrize(
    "change", [{"prompt": "Another prompt"}, {"count": 2}, {"style": "casual"}, {"project": True}], ids=str
)
async def test_the_key_with_another_request_is_409_and_submits_nothing(suite: Suite, change: dict[str, Any]) -> None:
    _, headers = suite.user()
    project, other = await suite.project(headers), await suite.project(headers)
    assert (await suite.generate(keyed(headers, "k"), project)).status_code == 201
    fields = {k: v for k, v in change.items() if k != "project"}
    count = fields.pop("count", 1)
    reused = await suite.generate(keyed(headers, "k"), other if "project" in change else project, count, **fields)
    assert (reused.status_code, reused.json()) == (409, REUSED)
    assert len(suite.fake.calls) == 1 and len(await jobs(suite, headers)) == 1
    assert (await suite.balance(headers))["balance"] == 85


async def test_a_refused_submit_leaves_its_key_free(suite: Suite) -> None:
    _, headers = suite.user()
    project = await suite.project(headers)
    assert (await suite.generate(headers, project, count=5)).status_code == 201  # 55 of 100
    refused = await suite.generate(keyed(headers, "k"), project, count=5)
    assert refused.status_code == 402, refused.text
    submitted = await suite.generate(keyed(headers, "k"), project, count=1)
    assert submitted.status_code == 201 and REPLAYED not in submitted.headers, submitted.text
    assert (await suite.balance(headers))["balance"] == 30


async def test_a_retry_while_the_first_submit_runs_is_409_in_progress_and_reserves_nothing(
    suite: Suite, monkeypatch
) -> None:
    _, headers = suite.user()
    project = await suite.project(headers)
    held = HeldFirstCall(suite.generation_app.state.parts[GenerationWorkflows].credits, "reserve", monkeypatch)
    first = asyncio.create_task(suite.generate(keyed(headers, "slow"), project))
    await asyncio.wait_for(held.reached.wait(), 10)
    retry = await suite.generate(keyed(headers, "slow"), project)
    assert (retry.status_code, retry.headers.get("retry-after")) == (409, "1"), retry.text
    assert retry.json() == {"error": "A request with this Idempotency-Key is still in progress"}
    held.go.set()
    assert (await first).status_code == 201
    later = await suite.generate(keyed(headers, "slow"), project)
    assert (later.status_code, later.headers.get(REPLAYED)) == (201, "true")
    assert len(suite.fake.calls) == 1 and len(await jobs(suite, headers)) == 1
    assert (await suite.balance(headers))["balance"] == 85


async def test_a_failed_generation_replays_its_failure_marked_as_a_replay(suite: Suite) -> None:
    """The key names the job: its retry answers that job's 502 (nothing charged), marked, without asking the
    provider again; another try takes another key."""
    _, headers = suite.user()
    project = await suite.project(headers)
    suite.fake.script(MODEL, "text")
    failed = await suite.generate(keyed(headers, "doomed"), project)
    assert failed.status_code == 502 and REPLAYED not in failed.headers, failed.text
    asked = len(suite.fake.calls)
    retry = await suite.generate(keyed(headers, "doomed"), project)
    assert (retry.status_code, retry.headers.get(REPLAYED)) == (502, "true")
    assert retry.json() == failed.json() and len(suite.fake.calls) == asked
    assert (await suite.balance(headers))["balance"] == 100


@pytest.mark.parametrize("key", [b"", b"x" * 201, b"has space", b"\xc3\xa9"], ids=["empty", "long", "space", "utf8"])
async def test_a_malformed_key_is_400_and_submits_nothing(suite: Suite, key: bytes) -> None:
    _, headers = suite.user()
    project = await suite.project(headers)
    response = await suite.generate(keyed(headers, key), project)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Validation error"
    assert suite.fake.calls == [] and await jobs(suite, headers) == []
    assert (await suite.balance(headers))["balance"] == 100
