from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lumiku_common.service import ServiceSpec, create_service
from lumiku_projects.endpoints import internal, router
from lumiku_projects.settings import ProjectsSettings


def create_app(settings: ProjectsSettings | None = None) -> FastAPI:
    return create_service(
        ServiceSpec(
            settings=settings or ProjectsSettings(),
            routers=[router, internal],
            migrations=Path(__file__).parent / "migrations",
            title="Lumiku projects",
        )
    )
