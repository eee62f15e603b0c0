"""Each service's migrations build exactly the schema its models describe (Alembic's autogenerate finds no
difference), including the outbox and inbox tables that each first migration copies on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import lumiku_avatars.models
import lumiku_credits.models
import lumiku_generation.models
import lumiku_projects.models
import lumiku_usage.models
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.messaging.tables import messaging_metadata
from lumiku_common.migrations import upgrade
from lumiku_common.settings import ServiceSettings
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.testing import settings_for_tests
from lumiku_generation.settings import GenerationSettings
from lumiku_projects.settings import ProjectsSettings
from lumiku_usage.settings import UsageSettings

SERVICES: dict[str, tuple[type[ServiceSettings], Any]] = {
    "projects": (ProjectsSettings, lumiku_projects.models),
    "avatars": (AvatarsSettings, lumiku_avatars.models),
    "generation": (GenerationSettings, lumiku_generation.models),
    "credits": (CreditsSettings, lumiku_credits.models),
    "usage": (UsageSettings, lumiku_usage.models),
}


def _not_a_partition(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Month partitions (and the default one) are made at run time, not by models: not a difference."""
    return not (type_ == "table" and reflected and compare_to is None and (name or "").startswith("usage_events_"))


def _differences(connection: Connection, metadata: list[MetaData]) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": False, "include_object": _not_a_partition}
    )
    return list(compare_metadata(context, metadata))  # type: ignore[arg-type]  # alembic accepts a sequence


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_models_match_migrations(service: str) -> None:
    settings_cls, models = SERVICES[service]
    settings = settings_for_tests(settings_cls, namespace="schema")
    await upgrade(Path(models.__file__).parent / "migrations", settings.database_url)
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences, [models.Base.metadata, messaging_metadata])
    finally:
        await engine.dispose()
    assert differences == []
