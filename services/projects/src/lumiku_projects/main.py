from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lumiku_common.idempotency import key_retention
from lumiku_common.service import ServiceSpec, create_service
from lumiku_projects.endpoints import internal, router
from lumiku_projects.models import idempotency_keys
from lumiku_projects.settings import ProjectsSettings


def create_app(settings: ProjectsSettings | None = None) -> FastAPI:
    settings = settings or ProjectsSettings()
    return create_service(
        ServiceSpec(
            settings=settings,
            routers=[router, internal],
            migrations=Path(__file__).parent / "migrations",
            retained=[key_retention(idempotency_keys, settings)],
            title="Lumiku projects",
        )
    )
