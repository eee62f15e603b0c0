"""The suite as separate processes over real TCP, the way `make dev` runs it: killing a service with
SIGKILL loses no event, the gateway answers 503 while it is gone, and recovers when it returns."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import lumiku_projects
from lumiku_devtools.processes import Process
from lumiku_devtools.testing import EventSpy, auth, eventually, free_port, prepare_database, settings_for_tests
from lumiku_projects.settings import ProjectsSettings

URL = "/api/apps/avatar-creator/projects"
MIGRATIONS = Path(lumiku_projects.__file__).parent / "migrations"


@pytest.fixture
def settings() -> ProjectsSettings:
    return settings_for_tests(ProjectsSettings)


@pytest.fixture
def processes(settings: ProjectsSettings) -> Iterator[dict[str, Process]]:
    projects_port, gateway_port = free_port(), free_port()
    env = {
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "DATABASE_NAME": settings.database_name,
        "EVENTS_EXCHANGE": settings.events_exchange,
        "OUTBOX_POLL_SECONDS": "0.05",
        "RATE_LIMIT_ENABLED": "false",
        "SERVICE_URLS": json.dumps({"projects": f"http://127.0.0.1:{projects_port}"}),
    }
    procs = {
        "projects": Process.uvicorn("lumiku_projects.main:create_app", projects_port, env),
        "gateway": Process.uvicorn("lumiku_gateway.main:create_app", gateway_port, env),
    }
    yield procs
    for p in procs.values():
        p.stop()


async def test_sigkill_loses_no_event_and_gateway_recovers(settings, processes):
    await prepare_database(settings, MIGRATIONS)
    projects, gateway = processes["projects"], processes["gateway"]
    # Without workers the API commits rows and outbox entries that nobody publishes yet.
    projects.start(RUN_WORKERS="false")
    gateway.start()
    await asyncio.gather(projects.wait_ready(), gateway.wait_ready())
    headers = auth(settings, "alice")
    base = f"http://127.0.0.1:{gateway.port}"
    async with EventSpy(settings.amqp_url, settings.events_exchange, "project.created") as spy:
        async with httpx.AsyncClient(base_url=base, headers=headers) as api:
            created = [(await api.post(URL, json={"name": f"P{i}"})).json()["project"]["id"] for i in range(5)]
            projects.stop()  # SIGKILL
            down = await api.get(URL)
            assert (down.status_code, down.json()["error"]) == (503, "Service unavailable")
            # The suite's health is at most a second old (READINESS_FRESH_SECONDS): it may still say healthy.
            health = await eventually(lambda: _degraded(api), timeout=5)
            assert health.json()["services"]["projects"] == "unavailable"

            projects.start()  # with workers: its relay publishes what the killed process left behind
            await projects.wait_ready()
            await spy.wait_for("project.created", 5, timeout=30)
            listed = (await api.get(URL)).json()["projects"]
            assert [p["id"] for p in listed] == created[::-1]
            assert (await eventually(lambda: _healthy(api), timeout=5)).json()["status"] == "healthy"
        await asyncio.sleep(0.3)
    counts = Counter(e["data"]["projectId"] for e in spy.events)
    assert set(counts) == set(created) and max(counts.values()) == 1


async def _degraded(api: httpx.AsyncClient) -> httpx.Response | None:
    health = await api.get("/api/health")
    return health if health.status_code == 503 else None


async def _healthy(api: httpx.AsyncClient) -> httpx.Response | None:
    health = await api.get("/api/health")
    return health if health.status_code == 200 else None
