from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import lumiku_projects
from lumiku_devtools.gateway import gateway_for
from lumiku_devtools.testing import auth, prepare_database, settings_for_tests
from lumiku_projects.main import create_app
from lumiku_projects.settings import ProjectsSettings

MIGRATIONS = Path(lumiku_projects.__file__).parent / "migrations"


@pytest.fixture(scope="session")
def settings() -> ProjectsSettings:
    return settings_for_tests(ProjectsSettings)


@pytest.fixture
async def api(settings: ProjectsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in front of a fresh projects service."""
    await prepare_database(settings, MIGRATIONS)
    async with gateway_for({"projects": create_app(settings)}) as client:
        yield client


@pytest.fixture
def alice(settings: ProjectsSettings) -> dict[str, str]:
    return auth(settings, "alice")


@pytest.fixture
def bob(settings: ProjectsSettings) -> dict[str, str]:
    return auth(settings, "bob")
