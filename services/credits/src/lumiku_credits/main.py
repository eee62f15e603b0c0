from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from lumiku_common import metrics
from lumiku_common.db import Database
from lumiku_common.periodic import periodic
from lumiku_common.service import BackgroundLoop, ServiceSpec, create_service, database_for
from lumiku_credits import service
from lumiku_credits.endpoints import internal, router
from lumiku_credits.handlers import QUEUE, command_handlers
from lumiku_credits.repository import CreditsRepository
from lumiku_credits.settings import CreditsSettings

SWEEP_BATCH = 500


def expiry_sweeper(db: Database, settings: CreditsSettings) -> BackgroundLoop:
    """Marks expired holds and announces them. Correctness never waits for it: reads ignore expired holds."""

    async def sweep() -> bool:
        async with db.unit_of_work() as session:
            expired = await service.expire_due(session, SWEEP_BATCH)
        metrics.HOLDS_EXPIRED.inc(expired)  # after the commit: each hold counted once
        return expired == SWEEP_BATCH  # a full batch: more are due now

    return lambda: periodic("hold-expiry", sweep, settings.credits_sweep_seconds)


def hold_gauges(db: Database, settings: CreditsSettings) -> BackgroundLoop:
    async def measure() -> None:
        async with db.sessions() as session:
            live, overdue = await CreditsRepository(session).active_hold_counts()
        metrics.HOLDS_ACTIVE.set(live)
        metrics.HOLDS_OVERDUE.set(overdue)

    return metrics.refreshing("hold-metrics", measure, settings.metrics_refresh_seconds)


def create_app(settings: CreditsSettings | None = None) -> FastAPI:
    settings = settings or CreditsSettings()
    db = database_for(settings)
    return create_service(
        ServiceSpec(
            settings=settings,
            routers=[router, internal],
            db=db,
            migrations=Path(__file__).parent / "migrations",
            consumers={QUEUE: command_handlers()},
            background=[expiry_sweeper(db, settings), hold_gauges(db, settings)],
            title="Lumiku credits",
        )
    )
