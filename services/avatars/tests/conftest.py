"""The suite as a client sees it: the gateway in front of real projects, credits and avatars services (real
PostgreSQL and RabbitMQ), images on the local filesystem or on an S3-protocol server (moto) running here.

The services start once per session; every test uses fresh user ids, so tests never see each other's data
and each user starts with the credits service's signup bonus (100 credits)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

import lumiku_avatars
import lumiku_credits
import lumiku_projects
from lumiku_avatars.main import create_app as create_avatars
from lumiku_avatars.objects import ObjectJanitor, object_keys
from lumiku_avatars.settings import AvatarsSettings
from lumiku_avatars.workflows import AvatarWorkflows
from lumiku_common.ids import new_id
from lumiku_common.storage import Storage
from lumiku_credits.main import create_app as create_credits
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.gateway import gateway_for
from lumiku_devtools.infra_selection import s3_keys
from lumiku_devtools.testing import (
    EventSpy,
    auth,
    delete_queues,
    eventually,
    prepare_database,
    s3_server,
    settings_for_tests,
)
from lumiku_projects.main import create_app as create_projects
from lumiku_projects.settings import ProjectsSettings

sys.path.insert(0, str(Path(__file__).parent))  # the sample and attack-corpus modules beside this file

APP = "/api/apps/avatar-creator"
QUEUES = ("avatars.project-events", "avatars.usage-events")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@dataclass
class Suite:
    api: httpx.AsyncClient
    avatars_app: Any
    settings: AvatarsSettings

    @property
    def workflows(self) -> AvatarWorkflows:
        workflows: AvatarWorkflows = self.avatars_app.state.parts[AvatarWorkflows]
        return workflows

    @property
    def storage(self) -> Storage:
        return self.workflows.storage

    @property
    def janitor(self) -> ObjectJanitor:
        janitor: ObjectJanitor = self.avatars_app.state.parts[ObjectJanitor]
        return janitor

    def direct(self) -> httpx.AsyncClient:
        """A client of the avatars service itself, bypassing the gateway."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.avatars_app), base_url="http://avatars")

    def user(self) -> tuple[str, dict[str, str]]:
        user_id = f"user-{new_id()}"
        return user_id, auth(self.settings, user_id)

    async def project(self, headers: dict[str, str], name: str = "Campaign") -> str:
        response = await self.api.post(f"{APP}/projects", json={"name": name}, headers=headers)
        assert response.status_code == 201, response.text
        project_id: str = response.json()["project"]["id"]
        return project_id

    async def upload(
        self,
        headers: dict[str, str],
        project_id: str,
        image: bytes,
        filename: str = "photo.jpg",
        content_type: str = "image/jpeg",
        **fields: str,
    ) -> httpx.Response:
        data = {"name": "My Avatar", **fields}
        files = {"image": (filename, image, content_type)}
        return await self.api.post(f"{APP}/projects/{project_id}/avatars", data=data, files=files, headers=headers)

    async def created(self, headers: dict[str, str], project_id: str, image: bytes, **fields: str) -> dict[str, Any]:
        response = await self.upload(headers, project_id, image, **fields)
        assert response.status_code == 201, response.text
        avatar: dict[str, Any] = response.json()["avatar"]
        return avatar

    async def rows(self, user_id: str) -> int:
        async with self.avatars_app.state.db.unit_of_work() as session:
            count = await session.scalar(text("SELECT count(*) FROM avatars WHERE user_id = :u"), {"u": user_id})
        return int(count)

    async def objects(self, user_id: str) -> list[str]:
        prefix = object_keys(user_id, "x", "", "")[0].rsplit("/", 2)[0] + "/"
        return [info.key async for info in self.storage.list(prefix)]

    async def no_objects(self, user_id: str) -> bool:
        return await self.objects(user_id) == []

    async def balance(self, headers: dict[str, str], settled: bool = True) -> dict[str, Any]:
        """The caller's credits; `settled` waits until no hold is pending (captures travel through the outbox)."""

        async def read() -> dict[str, Any]:
            response = await self.api.get("/api/credits/balance", headers=headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            assert not settled or body["held"] == 0, f"credits never settled: {body}"
            return body

        return await eventually(read, timeout=10)

    async def assert_untouched(self, user_id: str, headers: dict[str, str]) -> None:
        """No row, no object, no charge."""
        assert await self.rows(user_id) == 0
        assert await self.objects(user_id) == []
        balance = await self.balance(headers)
        assert (balance["balance"], balance["available"], balance["held"]) == (100, 100, 0)


def _settings(tmp: Path, namespace: str, **storage: Any) -> tuple[ProjectsSettings, CreditsSettings, AvatarsSettings]:
    # A session-long suite gets its own databases, queues and exchange (see settings_for_tests).
    projects = settings_for_tests(ProjectsSettings, namespace)
    credits = settings_for_tests(CreditsSettings, namespace, credits_sweep_seconds=3600)
    avatars = settings_for_tests(
        AvatarsSettings, namespace, storage_path=str(tmp / "objects"), object_purge_interval_seconds=5, **storage
    )
    return projects, credits, avatars


@contextlib.asynccontextmanager
async def suite_for(
    avatars: AvatarsSettings, projects: ProjectsSettings, credits: CreditsSettings
) -> AsyncIterator[Suite]:
    started: list[FastAPI] = []

    def avatars_app(transports: dict[str, httpx.AsyncBaseTransport]) -> FastAPI:
        started.append(create_avatars(avatars, transports))
        return started[0]

    services = {"projects": create_projects(projects), "credits": create_credits(credits), "avatars": avatars_app}
    storage = {k: getattr(avatars, k) for k in ("storage_backend", "storage_path", "s3_endpoint_url", "s3_bucket")}
    keys = {"s3_access_key_id": avatars.s3_access_key_id, "s3_secret_access_key": avatars.s3_secret_access_key}
    async with gateway_for(services, **storage, **keys) as api:
        yield Suite(api, started[0], avatars)
    await delete_queues(avatars, *QUEUES)


async def _prepared(projects: ProjectsSettings, credits: CreditsSettings, avatars: AvatarsSettings) -> None:
    await prepare_database(projects, Path(lumiku_projects.__file__).parent / "migrations")
    await prepare_database(credits, Path(lumiku_credits.__file__).parent / "migrations")
    await prepare_database(avatars, Path(lumiku_avatars.__file__).parent / "migrations")


@pytest.fixture(scope="session")
async def suite(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Suite]:
    projects, credits, avatars = _settings(tmp_path_factory.mktemp("fs"), "avatars")
    await _prepared(projects, credits, avatars)
    async with suite_for(avatars, projects, credits) as suite:
        yield suite


@pytest.fixture(scope="session")
async def s3_suite(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> AsyncIterator[Suite]:
    """Its own databases and queues, so it can run beside the filesystem suite."""
    projects, credits, avatars = _settings(
        tmp_path_factory.mktemp("s3"),
        "avatars_s3",
        storage_backend="s3",
        s3_endpoint_url=s3_endpoint,
        s3_bucket="avatars-test",
        s3_access_key_id=s3_keys()[0],
        s3_secret_access_key=s3_keys()[1],
        s3_create_bucket=True,
    )
    await _prepared(projects, credits, avatars)
    async with suite_for(avatars, projects, credits) as suite:
        yield suite


@pytest.fixture(scope="session")
async def spy(suite: Suite) -> AsyncIterator[EventSpy]:
    """Every event of the filesystem suite's run (tests pick theirs out by subject or user)."""
    async with EventSpy(suite.settings.amqp_url, suite.settings.events_exchange) as spy:
        yield spy
