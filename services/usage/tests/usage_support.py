"""Support of the usage tests. The suite as the sibling apps and the frontend see it: the gateway in front
of real projects, credits, avatars and usage services (real PostgreSQL and RabbitMQ). Services start once per
session; every test uses fresh users, so tests never see each other's data."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import text

import lumiku_avatars
import lumiku_credits
import lumiku_projects
import lumiku_usage
from lumiku_avatars.main import create_app as create_avatars
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.db import utcnow
from lumiku_common.ids import new_id
from lumiku_common.messaging.events import Envelope
from lumiku_credits.main import create_app as create_credits
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.gateway import gateway_for
from lumiku_devtools.testing import auth, delete_queues, eventually, prepare_database, publish_raw, settings_for_tests
from lumiku_projects.main import create_app as create_projects
from lumiku_projects.settings import ProjectsSettings
from lumiku_usage.handlers import AVATAR_EVENTS, AVATAR_USED
from lumiku_usage.main import create_app as create_usage
from lumiku_usage.settings import UsageSettings

APP = "/api/apps/avatar-creator"
MIGRATIONS = {
    m.__name__: Path(m.__file__).parent / "migrations" for m in (lumiku_projects, lumiku_credits, lumiku_avatars)
}
USAGE_MIGRATIONS = Path(lumiku_usage.__file__).parent / "migrations"


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def used_envelope(user_id: str | None, avatar_id: str, event_id: str | None = None, **data: Any) -> bytes:
    env = Envelope(
        id=event_id or new_id(),
        type="avatar.used",
        source="pose-generator",
        time=utcnow(),
        user_id=user_id,
        data={"avatarId": avatar_id, "appId": "pose-generator", "appName": "Pose Generator", "action": "generate_pose"}
        | data,
    )
    return env.model_dump_json(by_alias=True).encode()


@dataclass
class Suite:
    api: httpx.AsyncClient
    usage_app: FastAPI
    avatars_app: FastAPI
    settings: UsageSettings

    def user(self) -> tuple[str, dict[str, str]]:
        user_id = f"user-{new_id()}"
        return user_id, auth(self.settings, user_id)

    async def avatar(self, headers: dict[str, str]) -> str:
        project = await self.api.post(f"{APP}/projects", json={"name": "Campaign"}, headers=headers)
        assert project.status_code == 201, project.text
        response = await self.api.post(
            f"{APP}/projects/{project.json()['project']['id']}/avatars",
            data={"name": "Siti"},
            files={"image": ("a.jpg", jpeg(), "image/jpeg")},
            headers=headers,
        )
        assert response.status_code == 201, response.text
        avatar_id: str = response.json()["avatar"]["id"]
        return avatar_id

    async def publish_used(self, body: bytes) -> None:
        await publish_raw(self.settings, "avatar.used", body)

    async def rows(self, avatar_id: str) -> int:
        async with self.usage_app.state.db.sessions() as session:
            count = await session.scalar(
                text("SELECT count(*) FROM usage_events WHERE avatar_id = :a"), {"a": avatar_id}
            )
        return int(count)

    async def usage_count(self, headers: dict[str, str], avatar_id: str) -> int:
        response = await self.api.get(f"{APP}/avatars/{avatar_id}", headers=headers)
        assert response.status_code == 200, response.text
        return int(response.json()["avatar"]["usageCount"])

    async def counted(self, headers: dict[str, str], avatar_id: str, n: int) -> None:
        async def check() -> bool:
            got = await self.usage_count(headers, avatar_id)
            assert got == n, f"usageCount {got}, expected {n}"
            return True

        await eventually(check, timeout=15)

    async def history(self, headers: dict[str, str], avatar_id: str, **params: Any) -> httpx.Response:
        return await self.api.get(f"{APP}/avatars/{avatar_id}/usage-history", params=params, headers=headers)


@contextlib.asynccontextmanager
async def suite_for(namespace: str, tmp: Path, **usage_overrides: Any) -> AsyncIterator[Suite]:
    projects = settings_for_tests(ProjectsSettings, namespace)
    credits = settings_for_tests(CreditsSettings, namespace, credits_sweep_seconds=3600)
    avatars = settings_for_tests(AvatarsSettings, namespace, storage_path=str(tmp / "objects"))
    usage = settings_for_tests(UsageSettings, namespace, **usage_overrides)
    for settings, migrations in zip((projects, credits, avatars), MIGRATIONS.values(), strict=True):
        await prepare_database(settings, migrations)
    await prepare_database(usage, USAGE_MIGRATIONS)
    started: dict[str, FastAPI] = {}

    def avatars_app(transports: dict[str, httpx.AsyncBaseTransport]) -> FastAPI:
        started["avatars"] = create_avatars(avatars, transports)
        return started["avatars"]

    def usage_app(transports: dict[str, httpx.AsyncBaseTransport]) -> FastAPI:
        started["usage"] = create_usage(usage, transports)
        return started["usage"]

    services = {
        "projects": create_projects(projects),
        "credits": create_credits(credits),
        "avatars": avatars_app,
        "usage": usage_app,
    }
    async with gateway_for(services, storage_path=avatars.storage_path) as api:
        yield Suite(api, started["usage"], started["avatars"], usage)
    await delete_queues(usage, AVATAR_EVENTS, AVATAR_USED)
    await delete_queues(avatars, "avatars.project-events", "avatars.usage-events")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
