"""Every service with PostgreSQL cut off (a TCP proxy in front of the shared server, cut and restored): each
route answers 503 with Retry-After in the spec's shape, never 500, /ready says why, and it recovers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

import lumiku_avatars
import lumiku_credits
import lumiku_projects
from lumiku_avatars.main import create_app as create_avatars
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.settings import ServiceSettings
from lumiku_credits.main import create_app as create_credits
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.testing import TcpProxy, auth, prepare_database, running, settings_for_tests
from lumiku_projects.main import create_app as create_projects
from lumiku_projects.settings import ProjectsSettings

APP = "/api/apps/avatar-creator"
Request = tuple[str, str, dict[str, Any] | None]
# service: (settings, app factory, package, requests that need the database, one that succeeds once it is back)
SERVICES: dict[str, tuple[type[ServiceSettings], Callable[[Any], FastAPI], Any, list[Request], Request]] = {
    "projects": (
        ProjectsSettings,
        create_projects,
        lumiku_projects,
        [
            ("GET", f"{APP}/projects", None),
            ("POST", f"{APP}/projects", {"name": "P"}),
            ("GET", f"{APP}/projects/x", None),
        ],
        ("POST", f"{APP}/projects", {"name": "P"}),
    ),
    "credits": (
        CreditsSettings,
        create_credits,
        lumiku_credits,
        [("GET", "/api/credits/balance", None), ("GET", "/api/credits/transactions", None)],
        ("GET", "/api/credits/balance", None),
    ),
    "avatars": (
        AvatarsSettings,
        create_avatars,
        lumiku_avatars,
        [("GET", f"{APP}/avatars", None), ("GET", f"{APP}/stats", None), ("PUT", f"{APP}/avatars/x", {"name": "N"})],
        ("GET", f"{APP}/avatars", None),
    ),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_database_outage_is_503_with_retry_after_and_recovers(service: str, tmp_path: Path) -> None:
    settings_cls, create_app, package, requests, after = SERVICES[service]
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    base = settings_for_tests(settings_cls, namespace="dbdown", storage_path=str(tmp_path))
    await prepare_database(base, Path(package.__file__).parent / "migrations")
    settings = base.model_copy(update={"postgres_url": f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}"})
    headers = auth(settings, "outage-user")
    try:
        async with running(create_app(settings)) as client:
            proxy.cut()
            for method, path, body in requests:
                response = await client.request(method, path, json=body, headers=headers)
                assert response.status_code == 503, (method, path, response.text)
                assert response.json() == {"error": "Service unavailable"}
                assert response.headers["retry-after"] == "5"
            ready = await client.get("/ready")
            assert (ready.status_code, ready.json()["checks"]["database"]) == (503, "unavailable")
            proxy.restore()
            method, path, body = after
            assert (await client.request(method, path, json=body, headers=headers)).status_code in (200, 201)
    finally:
        await proxy.stop()
