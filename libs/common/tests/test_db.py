"""Database bootstrap against the real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg

from lumiku_common.db import ensure_database
from lumiku_common.ids import new_id


async def test_concurrent_database_creation_is_safe():
    """An API pod and its worker starting at once against a new database must both come up."""
    name = f"lumiku_create_race_{new_id()}"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        await asyncio.gather(*(ensure_database(url) for _ in range(6)))
    finally:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.close()
