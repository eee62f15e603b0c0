from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI

from lumiku_common import metrics
from lumiku_common.auth import ServiceTokens
from lumiku_common.clients.avatars import AvatarsClient
from lumiku_common.clients.credits import CreditsClient
from lumiku_common.clients.projects import ProjectsClient
from lumiku_common.idempotency import key_retention
from lumiku_common.internal import InternalClient
from lumiku_common.periodic import periodic
from lumiku_common.retention import Retention
from lumiku_common.service import ServiceSpec, create_service, database_for
from lumiku_generation.endpoints import router
from lumiku_generation.handlers import JOBS_QUEUE, PROJECTS_QUEUE, job_handlers, project_handlers
from lumiku_generation.models import ACTIVE, DeletedProject, idempotency_keys
from lumiku_generation.provider import Provider, provider_from
from lumiku_generation.repository import GenerationRepository
from lumiku_generation.settings import GenerationSettings
from lumiku_generation.signals import Signals
from lumiku_generation.workflows import GenerationWorkflows


def create_app(
    settings: GenerationSettings | None = None,
    transports: dict[str, httpx.AsyncBaseTransport] | None = None,
    provider: Provider | None = None,
) -> FastAPI:
    """`transports` lets tests wire projects, credits and avatars in-process; `provider` replaces the one the
    settings choose (tests)."""
    settings = settings or GenerationSettings()
    transports = transports or {}
    tombstones = timedelta(days=settings.tombstone_retention_days)
    tokens = ServiceTokens(settings.service_token_secret, settings.service_name)

    def client(name: str, timeout: float = 10.0) -> InternalClient:
        return InternalClient(settings.service_urls[name], tokens, timeout=timeout, transport=transports.get(name))

    db = database_for(settings)
    signals = Signals(settings.database_url)
    workflows = GenerationWorkflows(
        settings,
        db,
        ProjectsClient(client("projects")),
        CreditsClient(client("credits")),
        AvatarsClient(client("avatars", timeout=60.0)),  # decodes and re-encodes the provider's image
        provider or provider_from(settings, transports.get("provider")),
        signals,
    )

    async def startup(_: FastAPI) -> None:
        signals.start()

    async def shutdown(_: FastAPI) -> None:
        await signals.stop()
        for closing in (workflows.projects, workflows.credits, workflows.avatars, workflows.provider):
            await closing.aclose()

    async def sweep() -> None:
        await periodic("generation-sweep", workflows.sweep, settings.sweep_seconds, first_delay=settings.sweep_seconds)

    async def measure() -> None:
        async with db.sessions() as session:
            counts = await GenerationRepository(session).active_counts()
        metrics.set_all(metrics.GENERATION_JOBS, counts.items(), ACTIVE)

    job_gauges = metrics.refreshing("generation-metrics", measure, settings.metrics_refresh_seconds)

    return create_service(
        ServiceSpec(
            settings=settings,
            routers=[router],
            db=db,
            migrations=Path(__file__).parent / "migrations",
            consumers={JOBS_QUEUE: job_handlers(workflows), PROJECTS_QUEUE: project_handlers(settings)},
            background=[sweep, job_gauges],
            retained=[
                key_retention(idempotency_keys, settings),
                Retention.of_model(DeletedProject, "deleted_at", tombstones),
            ],
            on_startup=[startup],
            on_shutdown=[shutdown],
            title="Lumiku generation",
            parts=[workflows],
        )
    )
