from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI

from lumiku_common.db import Database
from lumiku_common.logs import get_logger
from lumiku_common.service import ServiceSpec, create_service
from lumiku_credits import service
from lumiku_credits.endpoints import internal, router
from lumiku_credits.handlers import QUEUE, command_handlers
from lumiku_credits.settings import CreditsSettings

log = get_logger(__name__)
SWEEP_BATCH = 500


def expiry_sweeper(settings: CreditsSettings) -> Callable[[FastAPI], Awaitable[None]]:
    """Marks expired holds and announces them. Correctness never waits for it: reads ignore expired holds."""

    async def sweep(app: FastAPI) -> None:
        db: Database = app.state.db
        while True:
            expired = 0
            try:
                async with db.unit_of_work() as session:
                    expired = await service.expire_due(session, SWEEP_BATCH)
            except Exception as exc:
                log.warning("hold_sweep_failed", error=repr(exc))
            if expired < SWEEP_BATCH:
                await asyncio.sleep(settings.credits_sweep_seconds)

    return sweep


def create_app(settings: CreditsSettings | None = None) -> FastAPI:
    settings = settings or CreditsSettings()
    return create_service(
        ServiceSpec(
            settings=settings,
            routers=[router, internal],
            migrations=Path(__file__).parent / "migrations",
            consumers={QUEUE: command_handlers()},
            background=[expiry_sweeper(settings)],
            title="Lumiku credits",
        )
    )
