"""`python -m lumiku_common.worker avatars` as a real process beside an API that runs no workers
(RUN_WORKERS=false): it answers only its probes, relays the API's outbox (the uploads' captures) and runs the
project.deleted cascade, object purge included."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from avatars_samples import jpeg
from sqlalchemy import text

import lumiku_avatars
import lumiku_credits
import lumiku_projects
from lumiku_avatars.main import create_app as create_avatars
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.storage import FilesystemStorage
from lumiku_credits.main import create_app as create_credits
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.testing import (
    Metrics,
    auth,
    delete_queues,
    eventually,
    free_port,
    lifespan_of,
    prepare_database,
    running,
    settings_for_tests,
)
from lumiku_projects.main import create_app as create_projects
from lumiku_projects.settings import ProjectsSettings

APP = "/api/apps/avatar-creator"
NAMESPACE = "avatars_worker"


@pytest.fixture
def settings(tmp_path: Path) -> tuple[ProjectsSettings, CreditsSettings, AvatarsSettings]:
    projects = settings_for_tests(ProjectsSettings, NAMESPACE)
    credits = settings_for_tests(CreditsSettings, NAMESPACE)
    avatars = settings_for_tests(AvatarsSettings, NAMESPACE, storage_path=str(tmp_path / "objects"), run_workers=False)
    return projects, credits, avatars


@contextlib.contextmanager
def worker_process(avatars: AvatarsSettings, port: int, metrics_port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "DATABASE_NAME": avatars.database_name,
        "QUEUE_PREFIX": avatars.queue_prefix,
        "EVENTS_EXCHANGE": avatars.events_exchange,
        "STORAGE_PATH": avatars.storage_path,
        "OUTBOX_POLL_SECONDS": "0.05",
        "RUN_WORKERS": "false",  # the worker must switch them on itself
        "METRICS_PORT": str(metrics_port),
    }
    command = [sys.executable, "-m", "lumiku_common.worker", "avatars", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def api_without_workers(
    projects: ProjectsSettings, credits: CreditsSettings, avatars: AvatarsSettings
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """The projects and credits services (with their workers), and the avatars API with none."""
    async with (
        lifespan_of(create_projects(projects)) as p,
        lifespan_of(create_credits(credits)) as c,
    ):
        transports = {"projects": httpx.ASGITransport(app=p.app), "credits": httpx.ASGITransport(app=c.app)}
        app = create_avatars(avatars, transports)
        async with (
            running(app) as api,
            httpx.AsyncClient(transport=transports["projects"], base_url="http://projects") as projects_api,
        ):
            assert app.state.workers.tasks == []  # this process relays, consumes and sweeps nothing
            yield api, projects_api


async def test_standalone_worker_serves_probes_relays_and_cascades(settings):
    projects, credits, avatars = settings
    for s, package in ((projects, lumiku_projects), (credits, lumiku_credits), (avatars, lumiku_avatars)):
        await prepare_database(s, Path(package.__file__).parent / "migrations")
    port, metrics_port = free_port(), free_port()
    try:
        with worker_process(avatars, port, metrics_port) as proc:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:

                async def ready() -> bool:
                    assert proc.poll() is None, "the worker exited"
                    with contextlib.suppress(httpx.HTTPError):
                        return (await probe.get("/ready")).status_code == 200
                    return False

                await eventually(ready, timeout=60, interval=0.2, what="worker ready (consumers bound)")
                assert (await probe.get("/health")).json()["service"] == "avatars"
                for path in (f"{APP}/avatars", "/docs", "/internal/avatars/by-projects", "/", "/metrics"):
                    response = await probe.get(path)
                    assert (response.status_code, response.json()) == (404, {"error": "Not found"}), path

            await cascade_through_the_worker(projects, credits, avatars)
            await worker_metrics(avatars, metrics_port)
    finally:
        await delete_queues(avatars, "avatars.project-events", "avatars.usage-events")
        await delete_queues(credits, "credits.commands")


async def cascade_through_the_worker(
    projects: ProjectsSettings, credits: CreditsSettings, avatars: AvatarsSettings
) -> None:
    user = "worker-user"
    headers = auth(avatars, user)
    async with api_without_workers(projects, credits, avatars) as (api, projects_api):
        created = await projects_api.post(f"{APP}/projects", json={"name": "Doomed"}, headers=headers)
        project = created.json()["project"]["id"]
        for _ in range(2):
            files = {"image": ("a.jpg", jpeg(64, 64), "image/jpeg")}
            upload = await api.post(
                f"{APP}/projects/{project}/avatars", data={"name": "A"}, files=files, headers=headers
            )
            assert upload.status_code == 201, upload.text
        assert len(await stored(avatars)) == 4

        async def captured() -> bool:  # only the worker relays the API's outbox
            async with avatars_db(avatars) as conn:
                pending = await conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
            return pending == 0

        await eventually(captured, what="the worker relayed the API's outbox")
        assert (await projects_api.delete(f"{APP}/projects/{project}", headers=headers)).status_code == 200

        async def cascaded() -> bool:
            async with avatars_db(avatars) as conn:
                rows = await conn.scalar(text("SELECT count(*) FROM avatars"))
            return rows == 0 and await stored(avatars) == []

        await eventually(cascaded, timeout=20, what="the worker's cascade removed rows and objects")


async def worker_metrics(avatars: AvatarsSettings, metrics_port: int) -> None:
    """What the worker did, on its metrics port: the relay's publishes and the cascade's consumer."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}") as client:
        metrics = await Metrics.scrape(client)
    queue = f"{avatars.queue_prefix}avatars.project-events"
    assert (metrics.value("lumiku_outbox_published_total", service="avatars") or 0) >= 4  # 2 avatars, 2 captures
    assert (metrics.value("lumiku_consumer_messages_total", queue=queue, outcome="handled") or 0) >= 1


async def stored(avatars: AvatarsSettings) -> list[str]:
    return [info.key async for info in FilesystemStorage(avatars.storage_path).list("avatars/")]


@contextlib.asynccontextmanager
async def avatars_db(avatars: AvatarsSettings) -> AsyncIterator[object]:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(avatars.database_url)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()
