"""Database bootstrap against the real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import literal_column, select

from lumiku_common.db import Database, Query, ensure_database
from lumiku_common.errors import is_unavailable
from lumiku_common.ids import new_id
from lumiku_devtools.testing import TcpProxy


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


async def test_a_read_on_a_lost_connection_is_unavailable_and_the_next_read_gets_a_new_connection(settings):
    """`Database.fetch` runs on the pooled connection's driver, past SQLAlchemy's own disconnect handling: a
    connection lost under it must not go back to the pool (the next read would get it: pings only follow idling)."""
    await ensure_database(settings.database_url)
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    db = Database(settings.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), "common", pool_size=1)
    one = Query(select(literal_column("1").label("one")))
    try:
        assert [row["one"] for row in await db.fetch(one)] == [1]
        proxy.cut()
        with pytest.raises(Exception) as lost:
            await db.fetch(one)
        assert is_unavailable(lost.value)
        proxy.restore()
        found = await db.fetchrow(one)
        assert found is not None and found["one"] == 1
    finally:
        await db.dispose()
        await proxy.stop()
