"""Database bootstrap against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from sqlalchemy import bindparam, literal_column, select, text

from lumiku_common.db import PING_AFTER_IDLE_SECONDS, Database, Query, ensure_database
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


async def test_a_write_on_the_driver_commits_whole_or_not_at_all_and_a_lost_connection_is_not_kept(settings):
    """`Database.driver_work`: its statements commit together when the block ends; an error rolls them back and
    the connection is reused outside any transaction; one lost mid-transaction is unavailable and replaced; one
    that runs nothing takes no connection."""
    await ensure_database(settings.database_url)
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    db = Database(settings.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), "common", pool_size=1)
    table = f"driver_work_{new_id()}"
    insert = Query(text(f"INSERT INTO {table} VALUES (:n)").bindparams(bindparam("n")))
    count = Query(select(literal_column("count(*)").label("n")).select_from(text(table)))
    try:
        async with db.driver_work():  # refused before its first statement: no connection taken, nothing sent
            assert db.engine.pool.checkedout() == 0
        async with db.driver() as connection:
            await connection.execute(f"CREATE TABLE {table} (n int)")
        async with db.driver_work() as work:
            await work.execute(insert, n=1)
            await work.execute(insert, n=2)
        with pytest.raises(RuntimeError):
            async with db.driver_work() as work:
                await work.execute(insert, n=3)
                raise RuntimeError("the change failed")
        async with db.driver() as connection:
            assert not connection.is_in_transaction()
        assert (await db.fetchrow(count) or {"n": None})["n"] == 2
        with pytest.raises(Exception) as lost:
            async with db.driver_work() as work:
                await work.execute(insert, n=4)
                proxy.cut()
                await work.execute(insert, n=5)
        assert is_unavailable(lost.value)
        proxy.restore()
        assert (await db.fetchrow(count) or {"n": None})["n"] == 2
    finally:
        async with db.driver() as connection:
            await connection.execute(f"DROP TABLE IF EXISTS {table}")
        await db.dispose()
        await proxy.stop()


PID = Query(select(literal_column("pg_backend_pid()").label("pid")))


async def _backend(db: Database) -> int:
    row = await db.fetchrow(PID)
    assert row is not None
    return int(row["pid"])


async def test_hot_reads_keep_a_few_connections_out_of_the_pool_and_give_the_rest_back(settings):
    await ensure_database(settings.database_url)
    db = Database(settings.database_url, "common", pool_size=4)  # keeps at most 2
    try:
        assert len({await _backend(db) for _ in range(5)}) == 1  # one after the other: the same connection
        assert db.engine.pool.checkedout() == 1  # kept, not returned
        pids = await asyncio.gather(*(_backend(db) for _ in range(6)))
        assert len(set(pids)) > 2 and db.engine.pool.checkedout() == 2  # the rest went back to the pool
        async with db.unit_of_work() as session:  # units of work still get connections from the pool
            assert (await session.execute(select(literal_column("1")))).scalar() == 1
    finally:
        await db.dispose()
    assert db.engine.pool.checkedout() == 0


async def test_a_kept_connection_that_idled_goes_back_to_the_pool_which_pings_it_first(
    settings, monkeypatch: pytest.MonkeyPatch
):
    await ensure_database(settings.database_url)
    db = Database(settings.database_url, "common", pool_size=2)
    pings = []
    ping = db.engine.sync_engine.dialect.do_ping
    monkeypatch.setattr(db.engine.sync_engine.dialect, "do_ping", lambda conn: pings.append(conn) or ping(conn))
    try:
        first = await _backend(db)
        assert await _backend(db) == first and pings == []  # kept and reused: no ping
        later = time.monotonic() + PING_AFTER_IDLE_SECONDS + 1
        monkeypatch.setattr(time, "monotonic", lambda: later)
        assert await _backend(db) == first  # back through the pool, pinged, then kept again
        assert len(pings) == 1 and db.engine.pool.checkedout() == 1
    finally:
        await db.dispose()
