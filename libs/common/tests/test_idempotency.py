"""Claims on Idempotency-Keys (`lumiku_common.idempotency`) where two attempts of one key meet."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import MetaData, select

from lumiku_common.idempotency import Attempt, Claim, Idempotency, idempotency_table


@pytest.fixture
async def keys(db):
    table = idempotency_table(MetaData())
    async with db.engine.begin() as conn:
        await conn.run_sync(table.metadata.drop_all)
        await conn.run_sync(table.metadata.create_all)
    return table


async def test_a_key_released_between_the_claims_insert_and_its_read_is_claimed_again(db, keys, monkeypatch):
    """The first attempt fails and frees its key just after the retry's insert met it: the retry finds no row
    to read, and claims the key instead of failing with a 500."""
    idempotency, attempt = Idempotency(keys), Attempt.of("k", "upload", {"name": "a"})
    first = await idempotency.claim(db, attempt)
    assert isinstance(first, Claim)
    insert = idempotency._insert

    async def insert_then_first_fails(session: Any, *args: Any, **kwargs: Any) -> bool:
        inserted = await insert(session, *args, **kwargs)
        if not inserted:
            await idempotency.release(db, first)  # its own transaction, committed before the retry reads
        return inserted

    monkeypatch.setattr(idempotency, "_insert", insert_then_first_fails)
    retry = await idempotency.claim(db, attempt)
    assert isinstance(retry, Claim) and retry.token != first.token
    async with db.sessions() as session:
        assert (await session.execute(select(keys.c.claim))).scalars().all() == [retry.token]
