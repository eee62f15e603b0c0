"""The suite as separate processes over real TCP, the way `make dev` runs it: killing a service with
SIGKILL loses no event, the gateway answers 503 while it is gone, and recovers when it returns."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import lumiku_projects
from lumiku_devtools.suite import uvicorn_command
from lumiku_devtools.testing import EventSpy, auth, eventually, free_port, prepare_database, settings_for_tests
from lumiku_projects.settings import ProjectsSettings

URL = "/api/apps/avatar-creator/projects"
MIGRATIONS = Path(lumiku_projects.__file__).parent / "migrations"


class Process:
    def __init__(self, factory: str, port: int, env: dict[str, str]):
        self.factory, self.port, self.env = factory, port, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> None:
        self.proc = subprocess.Popen(
            uvicorn_command(self.factory, self.port),
            env={**os.environ, **self.env, **extra_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def wait_ready(self, timeout: float = 60) -> None:
        async def ready() -> bool:
            try:
                return (await client.get(f"http://127.0.0.1:{self.port}/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        async with httpx.AsyncClient() as client:
            await eventually(ready, timeout, 0.2, f"port {self.port} ready")


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
        "projects": Process("lumiku_projects.main:create_app", projects_port, env),
        "gateway": Process("lumiku_gateway.main:create_app", gateway_port, env),
    }
    yield procs
    for p in procs.values():
        if p.proc and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(timeout=10)


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
            projects.kill()
            down = await api.get(URL)
            assert (down.status_code, down.json()["error"]) == (503, "Service unavailable")
            health = await api.get("/api/health")
            assert health.status_code == 503 and health.json()["services"]["projects"] == "unavailable"

            projects.start()  # with workers: its relay publishes what the killed process left behind
            await projects.wait_ready()
            await spy.wait_for("project.created", 5, timeout=30)
            listed = (await api.get(URL)).json()["projects"]
            assert [p["id"] for p in listed] == created[::-1]
            assert (await api.get("/api/health")).json()["status"] == "healthy"
        await asyncio.sleep(0.3)
    counts = Counter(e["data"]["projectId"] for e in spy.events)
    assert set(counts) == set(created) and max(counts.values()) == 1
