"""Every request of the quirk corpus, as raw bytes over a real socket, to a real gateway in front of real
projects, credits and avatars processes: never a 5xx, every error in the spec's `{"error": ...}` shape, the
edge's headers on every answer, and every process still up afterwards."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the corpus and process helpers beside this file

import quirk_corpus as corpus

from lumiku_devtools.processes import RawResponse, RealSuite, exchange, real_suite
from lumiku_devtools.testing import RUN_ID, token_for

USER = f"quirks-{RUN_ID}"


class Target:
    def __init__(self, suite: RealSuite, token: str, project: str):
        self.suite, self.token, self.project = suite, token, project


@pytest.fixture(scope="module")
async def target() -> AsyncIterator[Target]:
    async with real_suite(("projects", "credits", "avatars"), "quirks") as suite:
        token = token_for(suite.settings["gateway"], USER)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.gateway.port}") as api:
            created = await api.post(
                f"{corpus.APP}/projects", json={"name": "Quirks"}, headers={"Authorization": f"Bearer {token}"}
            )
        assert created.status_code == 201, created.text
        yield Target(suite, token, created.json()["project"]["id"])


def _params() -> list[pytest.ParameterSet]:
    return [pytest.param(q, id=q.name) for q in corpus.cases()]


def assert_edge_shape(response: RawResponse, head_only: bool) -> None:
    assert response.status < 500, (response.status, response.body[:300])
    if response.status >= 400 and not head_only:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    # One Date and one Server (the gateway's, never an upstream's as well); no sniffing, on every answer.
    assert len(response.header("date")) == 1 and len(response.header("server")) == 1, response.headers
    assert response.header("x-content-type-options") == ["nosniff"], response.headers
    assert not [name for name, _ in response.headers if name.startswith("access-control-")]


@pytest.mark.parametrize("quirk", _params())
async def test_quirk(target: Target, quirk: corpus.Quirk):
    raw = quirk.render(target.token, target.project)
    response = await exchange(target.suite.gateway.port, raw)
    assert_edge_shape(response, raw.startswith(b"HEAD "))
    if quirk.statuses is not None:
        assert response.status in quirk.statuses, (response.status, response.body[:300])
    assert all(p.alive for p in target.suite.processes)


async def test_suite_healthy_after_the_corpus(target: Target):
    """Runs last in this file: after every quirk, each process is up and answers."""
    response = await exchange(target.suite.gateway.port, corpus.request("GET", "/api/health", auth=False))
    assert response.status == 200 and response.json()["status"] == "healthy"  # type: ignore[index]
