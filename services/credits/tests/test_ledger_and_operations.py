"""What the database itself refuses, the expiry sweep, and the operator CLI."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from lumiku_credits import cli
from lumiku_credits.main import create_app
from lumiku_devtools.testing import running


async def test_ledger_rows_can_never_be_edited_or_deleted(credits, db):
    await credits.balance("alice")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE ledger_entries SET amount = 1000")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM ledger_entries")
    assert await db.fetchval("SELECT sum(amount) FROM ledger_entries") == 100


async def test_the_database_moves_the_wallet_and_refuses_an_overdraft(credits, db):
    await credits.balance("alice")
    insert = "INSERT INTO ledger_entries (id, user_id, amount, type, description) VALUES ($1, 'alice', $2, $3, 'x')"
    await db.execute(insert, "e1", -40, "usage")
    assert await db.fetchval("SELECT balance FROM wallets WHERE user_id = 'alice'") == 60
    assert await db.fetchval("SELECT balance_after FROM ledger_entries WHERE id = 'e1'") == 60
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(insert, "e2", -61, "usage")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(insert, "e3", 0, "bonus")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(insert, "e4", 5, "gift")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(insert.replace("'alice'", "'nobody'"), "e5", 5, "bonus")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE wallets SET balance = -1")
    assert await db.fetchval("SELECT balance FROM wallets WHERE user_id = 'alice'") == 60


async def test_a_hold_is_paid_for_by_one_entry_at_most(credits, db):
    hold = await credits.hold("alice", 15, "gen-1")
    insert = (
        "INSERT INTO ledger_entries (id, user_id, amount, type, description, hold_id)"
        " VALUES ($1, 'alice', -15, 'usage', 'x', $2)"
    )
    await db.execute(insert, "e1", hold["id"])
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, "e2", hold["id"])


async def test_the_sweep_marks_expired_holds_and_announces_them(settings, credits, db, spy):
    hold = await credits.hold("alice", 15, "gen-1", ttlSeconds=1)
    kept = await credits.hold("alice", 15, "gen-2")
    fast = settings.model_copy(update={"credits_sweep_seconds": 0.1})
    await asyncio.sleep(1.05)
    async with running(create_app(fast)):
        released = await spy.wait_for("credits.released")
    assert [e["data"]["holdId"] for e in released] == [hold["id"]]
    assert released[0]["data"]["reason"] == "expired"
    statuses = dict(await db.fetch("SELECT id, status FROM holds"))
    assert statuses == {hold["id"]: "expired", kept["id"]: "active"}
    late = await credits.capture(hold["id"], "late")
    assert late.status_code == 410


def lumiku(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_NAME": settings.database_name, "ENVIRONMENT": "test"}
    command = [sys.executable, "-m", "lumiku_devtools.cli", "credits", "grant", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def cli_args(user: str, amount: int, type_: str = "adjustment", key: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(user=user, amount=amount, type=type_, description="Operator grant", idempotency_key=key)


async def test_operator_cli_grants_through_the_service_code(settings, credits, db):
    await credits.hold("alice", 80, "gen-1")
    run = lumiku(settings, "--user", "alice", "--amount", "25", "--type", "purchase", "--idempotency-key", "op-1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "granted 25 credits (purchase) to alice; balance 125"
    again = await cli.grant(settings, cli_args("alice", 25, "purchase", "op-1"))
    assert again == "already granted 25 credits (purchase) to alice; balance 125"
    with pytest.raises(SystemExit, match="Insufficient credits"):
        await cli.grant(settings, cli_args("alice", -46))
    with pytest.raises(SystemExit, match="invalid grant"):
        await cli.grant(settings, cli_args("alice", 0))
    entries = await db.fetch("SELECT type, amount, reference_id FROM ledger_entries ORDER BY seq")
    assert [tuple(e) for e in entries] == [("bonus", 100, "alice"), ("purchase", 25, "operator:cli")]
    assert (await credits.balance("alice"))["available"] == 45
