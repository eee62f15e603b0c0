"""Rows kept for a while (`lumiku_common.retention`): the older ones go, the others stay."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import MetaData, func, insert, select

from lumiku_common.db import utcnow
from lumiku_common.idempotency import idempotency_table
from lumiku_common.retention import Retention


async def test_prune_deletes_only_the_rows_older_than_kept(db):
    keys = idempotency_table(MetaData())
    async with db.engine.begin() as conn:
        await conn.run_sync(keys.metadata.drop_all)
        await conn.run_sync(keys.metadata.create_all)
    now = utcnow()
    ages = {
        "old": timedelta(days=8),
        "just-old": timedelta(days=7, seconds=1),
        "young": timedelta(days=6),
        "new": timedelta(0),
    }
    async with db.unit_of_work() as session:
        for key, age in ages.items():
            row = {"key": key, "operation": "op", "request_hash": "h", "created_at": now - age}
            await session.execute(insert(keys).values(row))
    retention = Retention(keys, "created_at", timedelta(days=7))
    assert await retention.prune(db) == 2
    assert await retention.prune(db) == 0
    async with db.sessions() as session:
        assert set((await session.execute(select(keys.c.key))).scalars()) == {"young", "new"}
        assert await session.scalar(select(func.count()).select_from(keys)) == 2
