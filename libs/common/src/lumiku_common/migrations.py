"""Alembic, once: every service's `migrations/env.py` calls `run_env`, and `upgrade` migrates at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from lumiku_common.db import ensure_database
from lumiku_common.messaging.tables import messaging_metadata

_MIGRATION_LOCK = 0x4C554D49  # serialises replicas migrating the same database at once


def alembic_config(script_location: Path, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _upgrade(connection: Connection, cfg: Config) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade(script_location: Path, url: str) -> None:
    await ensure_database(url)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, alembic_config(script_location, url))
    finally:
        await engine.dispose()


def run_env(service_metadata: MetaData) -> None:
    """Body of each service's migrations/env.py; the outbox and inbox tables come with every service."""
    target = [service_metadata, messaging_metadata]

    def run(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=target, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()

    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return

    async def run_standalone() -> None:
        engine = create_async_engine(context.config.get_main_option("sqlalchemy.url") or "")
        async with engine.begin() as conn:
            await conn.run_sync(run)
        await engine.dispose()

    asyncio.run(run_standalone())
