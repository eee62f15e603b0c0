"""Support of the generation tests (fixtures in conftest.py). The suite as a client sees it: the gateway in
front of real projects, credits, avatars and generation services (real PostgreSQL and RabbitMQ) and a Hugging
Face stand-in over real TCP. The services start once per session; every test uses fresh user ids (each starts
with the 100-credit signup bonus) and scripts the stand-in's answers for its own calls by model id."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

import lumiku_avatars
import lumiku_credits
import lumiku_generation
import lumiku_projects
from lumiku_avatars.main import create_app as create_avatars
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.ids import new_id
from lumiku_credits.main import create_app as create_credits
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.fake_hf import FakeHuggingFace
from lumiku_devtools.gateway import gateway_for
from lumiku_devtools.testing import auth, delete_queues, eventually, prepare_database, settings_for_tests
from lumiku_generation.handlers import JOBS_QUEUE, PROJECTS_QUEUE
from lumiku_generation.main import create_app as create_generation
from lumiku_generation.settings import GenerationSettings
from lumiku_projects.main import create_app as create_projects
from lumiku_projects.settings import ProjectsSettings

APP = "/api/apps/avatar-creator"
MODEL = "test/flux-dev"
FALLBACK = "test/flux-schnell"

# Fast retries and sweeps: the behaviours are the real ones, the waits are short.
FAST = {
    "huggingface_token": "hf_test_token",
    "generation_model": MODEL,
    "generation_fallback_model": FALLBACK,
    "generation_width": 256,
    "generation_height": 256,
    "provider_timeout_seconds": 2.0,
    "provider_attempts": 3,
    "provider_backoff_seconds": 0.05,
    "provider_max_backoff_seconds": 0.2,
    "provider_max_wait_seconds": 1.0,
    "generation_sync_wait_s": 20.0,
    "lease_seconds": 3.0,
    "sweep_seconds": 0.5,
    "redispatch_seconds": 2.0,
}


def generation_settings(namespace: str, provider_url: str, **overrides: Any) -> GenerationSettings:
    return settings_for_tests(
        GenerationSettings, namespace, huggingface_inference_url=provider_url, **{**FAST, **overrides}
    )


@dataclass
class Suite:
    api: httpx.AsyncClient
    fake: FakeHuggingFace
    generation_app: FastAPI
    avatars_app: FastAPI
    settings: GenerationSettings
    transports: dict[str, httpx.AsyncBaseTransport]

    def user(self) -> tuple[str, dict[str, str]]:
        user_id = f"user-{new_id()}"
        return user_id, auth(self.settings, user_id)

    async def project(self, headers: dict[str, str]) -> str:
        response = await self.api.post(f"{APP}/projects", json={"name": "Campaign"}, headers=headers)
        assert response.status_code == 201, response.text
        project_id: str = response.json()["project"]["id"]
        return project_id

    async def generate(
        self, headers: dict[str, str], project_id: str, count: int | None = 1, prefer_async: bool = False, **fields: Any
    ) -> httpx.Response:
        body = {"prompt": "Professional woman with hijab, smiling", "name": "Siti", **fields}
        if count is not None:
            body["count"] = count
        extra = {"Prefer": "respond-async"} if prefer_async else {}
        return await self.api.post(
            f"{APP}/projects/{project_id}/avatars/generate", json=body, headers={**headers, **extra}, timeout=60
        )

    async def balance(self, headers: dict[str, str]) -> dict[str, Any]:
        """The caller's credits once nothing is held any more (captures and releases travel as commands)."""

        async def read() -> dict[str, Any]:
            response = await self.api.get("/api/credits/balance", headers=headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            assert body["held"] == 0, f"credits never settled: {body}"
            return body

        return await eventually(read, timeout=15)

    async def ledger(self, headers: dict[str, str]) -> list[dict[str, Any]]:
        response = await self.api.get("/api/credits/transactions", headers=headers)
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["transactions"]
        return entries

    async def avatars(self, user_id: str) -> list[dict[str, Any]]:
        async with self.avatars_app.state.db.unit_of_work() as session:
            rows = await session.execute(
                text("SELECT id, seed_used, source_type FROM avatars WHERE user_id = :u ORDER BY created_at"),
                {"u": user_id},
            )
        return [dict(r._mapping) for r in rows]

    async def job(self, headers: dict[str, str], job_id: str) -> dict[str, Any]:
        response = await self.api.get(f"{APP}/generations/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        generation: dict[str, Any] = response.json()["generation"]
        return generation

    async def finished(self, headers: dict[str, str], job_id: str, timeout: float = 20) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            job = await self.job(headers, job_id)
            return job if job["status"] not in ("queued", "running") else None

        return await eventually(done, timeout=timeout)


def prompt_calls(fake: FakeHuggingFace, marker: str) -> list[Any]:
    return [c for c in fake.calls if marker in str(c.body.get("inputs", ""))]


def all_settings(namespace: str, tmp: Path, provider_url: str, **generation: Any) -> dict[str, Any]:
    return {
        "projects": settings_for_tests(ProjectsSettings, namespace),
        "credits": settings_for_tests(CreditsSettings, namespace, credits_sweep_seconds=3600),
        "avatars": settings_for_tests(AvatarsSettings, namespace, storage_path=str(tmp / "objects")),
        "generation": generation_settings(namespace, provider_url, **generation),
    }


async def prepare(settings: dict[str, Any]) -> None:
    packages = {"projects": lumiku_projects, "credits": lumiku_credits, "avatars": lumiku_avatars}
    packages["generation"] = lumiku_generation
    for name, package in packages.items():
        await prepare_database(settings[name], Path(package.__file__).parent / "migrations")


@contextlib.asynccontextmanager
async def suite_for(settings: dict[str, Any], fake: FakeHuggingFace, **gateway: Any) -> AsyncIterator[Suite]:
    apps: dict[str, FastAPI] = {}

    def avatars(transports: dict[str, httpx.AsyncBaseTransport]) -> FastAPI:
        apps["avatars"] = create_avatars(settings["avatars"], transports)
        return apps["avatars"]

    def generation(transports: dict[str, httpx.AsyncBaseTransport]) -> FastAPI:
        apps["generation"] = create_generation(settings["generation"], transports)
        return apps["generation"]

    apps["projects"] = create_projects(settings["projects"])
    apps["credits"] = create_credits(settings["credits"])
    services = {
        "projects": apps["projects"],
        "credits": apps["credits"],
        "avatars": avatars,
        "generation": generation,
    }
    async with gateway_for(services, **gateway) as api:
        transports: dict[str, httpx.AsyncBaseTransport] = {n: httpx.ASGITransport(app=a) for n, a in apps.items()}
        yield Suite(api, fake, apps["generation"], apps["avatars"], settings["generation"], transports)
    await delete_queues(settings["avatars"], "avatars.project-events", "avatars.usage-events")
    await delete_queues(settings["generation"], JOBS_QUEUE, PROJECTS_QUEUE)
