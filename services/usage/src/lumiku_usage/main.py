from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi import FastAPI

from lumiku_common.auth import ServiceTokens
from lumiku_common.clients.avatars import AvatarsClient
from lumiku_common.db import Database
from lumiku_common.idempotency import key_retention
from lumiku_common.internal import InternalClient
from lumiku_common.logs import get_logger
from lumiku_common.periodic import periodic
from lumiku_common.service import BackgroundLoop, ServiceSpec, create_service, database_for
from lumiku_usage import service
from lumiku_usage.endpoints import router
from lumiku_usage.handlers import AVATAR_EVENTS, AVATAR_USED, avatar_handlers, usage_handlers
from lumiku_usage.models import idempotency_keys
from lumiku_usage.settings import UsageSettings
from lumiku_usage.workflows import UsageWorkflows

log = get_logger(__name__)


async def maintain_partitions(db: Database, settings: UsageSettings) -> None:
    async with db.unit_of_work() as session:
        created, dropped = await service.maintain_partitions(
            session, datetime.now(UTC), settings.usage_partitions_ahead, settings.usage_retention_months
        )
    if created or dropped:
        log.info("usage_partitions_maintained", created=created, dropped=dropped)


def partition_keeper(db: Database, settings: UsageSettings) -> BackgroundLoop:
    """Next months' partitions before they are needed; with retention, old months dropped whole."""

    async def run() -> None:
        await maintain_partitions(db, settings)

    return lambda: periodic("usage-partitions", run, settings.usage_partition_interval_seconds)


def create_app(
    settings: UsageSettings | None = None, transports: dict[str, httpx.AsyncBaseTransport] | None = None
) -> FastAPI:
    """`transports` lets tests wire the avatars service in-process."""
    settings = settings or UsageSettings()
    transports = transports or {}
    tokens = ServiceTokens(settings.service_token_secret, settings.service_name)
    avatars = AvatarsClient(
        InternalClient(
            settings.service_urls["avatars"],
            tokens,
            timeout=settings.owner_lookup_timeout_seconds,
            transport=transports.get("avatars"),
        )
    )
    db = database_for(settings)
    workflows = UsageWorkflows(settings, db, avatars)

    async def startup(_: FastAPI) -> None:
        # Before any insert: this month's partition exists even if the periodic keeper has not run yet.
        await maintain_partitions(db, settings)

    async def shutdown(_: FastAPI) -> None:
        await workflows.aclose()

    return create_service(
        ServiceSpec(
            settings=settings,
            routers=[router],
            db=db,
            migrations=Path(__file__).parent / "migrations",
            consumers={
                AVATAR_EVENTS: avatar_handlers(),
                AVATAR_USED: usage_handlers(workflows, settings.usage_batch_size, settings.usage_max_defer_seconds),
            },
            background=[partition_keeper(db, settings)],
            retained=[key_retention(idempotency_keys, settings)],
            on_startup=[startup],
            on_shutdown=[shutdown],
            parts=[workflows],
            title="Lumiku usage",
        )
    )
