"""The provider's calls as the generation service's /metrics shows them: latency by outcome, errors by kind."""

from __future__ import annotations

import httpx
from generation_support import MODEL, Suite

from lumiku_devtools.testing import Metrics


async def scrape(suite: Suite) -> Metrics:
    transport = httpx.ASGITransport(app=suite.generation_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://generation") as client:
        return await Metrics.scrape(client)


async def test_provider_calls_are_timed_and_errors_counted_by_kind(suite: Suite) -> None:
    _, headers = suite.user()
    project_id = await suite.project(headers)
    suite.fake.script(MODEL, "loading:0.1", "rate:0.1", "error", "ok")
    before = await scrape(suite)
    response = await suite.generate(headers, project_id)
    assert response.status_code == 201, response.text
    after = await scrape(suite)

    def grew(name: str, **labels: str) -> float:
        return (after.value(name, **labels) or 0) - (before.value(name, **labels) or 0)

    for kind in ("loading", "rate_limited", "failed"):
        assert grew("lumiku_provider_errors_total", provider="huggingface", kind=kind) == 1, kind
    assert grew("lumiku_provider_errors_total", provider="huggingface", kind="rejected") == 0
    for outcome in ("ok", "loading", "rate_limited", "failed"):
        timed = grew("lumiku_provider_request_duration_seconds_count", provider="huggingface", outcome=outcome)
        assert timed == 1, outcome
    assert grew("lumiku_generation_jobs_finished_total", status="succeeded") == 1
