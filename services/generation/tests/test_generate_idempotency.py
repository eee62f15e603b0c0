"""`Idempotency-Key` on generate, through the gateway: a retry answers the job the key first submitted (waiting for
it, or 202, as the retry asks) and reserves nothing; the key with another request is 409; a refused request
leaves its key free; concurrent twins submit one job, pay once, and the others release their holds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from generation_support import APP, Suite

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


async def test_concurrent_twins_submit_one_job_and_the_others_release_their_holds(suite: Suite, monkeypatch) -> None:
    """Every twin is held after its holds are reserved, so all of them race for the key's claim."""
    _, headers = suite.user()
    project = await suite.project(headers)
    twins = 3
    credits = suite.generation_app.state.parts[GenerationWorkflows].credits
    reserve, gate = credits.reserve, asyncio.Barrier(twins)

    async def reserve_together(request: Any) -> Any:
        hold = await reserve(request)
        await gate.wait()
        return hold

    monkeypatch.setattr(credits, "reserve", reserve_together)
    answers = await asyncio.gather(*(suite.generate(keyed(headers, "twin"), project) for _ in range(twins)))
    assert [a.status_code for a in answers] == [201] * twins, [a.text for a in answers]
    assert len({a.json()["generation"]["id"] for a in answers}) == 1
    assert sorted(a.headers.get(REPLAYED, "") for a in answers) == [""] + ["true"] * (twins - 1)
    assert len(suite.fake.calls) == 1 and len(await jobs(suite, headers)) == 1
    assert (await suite.balance(headers))["balance"] == 85


@pytest.mark.parametrize("key", [b"", b"x" * 201, b"has space", b"\xc3\xa9"], ids=["empty", "long", "space", "utf8"])
async def test_a_malformed_key_is_400_and_submits_nothing(suite: Suite, key: bytes) -> None:
    _, headers = suite.user()
    project = await suite.project(headers)
    response = await suite.generate(keyed(headers, key), project)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Validation error"
    assert suite.fake.calls == [] and await jobs(suite, headers) == []
    assert (await suite.balance(headers))["balance"] == 100
