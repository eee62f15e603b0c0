"""Credits: reserve+capture pairs per second at 32 concurrent callers, against the raw single-row commit rate
of the same PostgreSQL measured in the same run.

Calls the credits service layer in-process (no HTTP): each pair is two units of work exactly as the API runs
them — reserve (idempotency key, wallet lock, holds sum, hold insert, outbox events) then capture (key, wallet
and hold locks, ledger insert whose trigger moves the wallet, hold update, outbox event). The outbox relay does
not run, so publishing is not counted. Baseline: `INSERT` of one row + `COMMIT`, on 32 asyncpg connections.

Runs against its own database (`lumiku_credits_bench`, recreated each run). Baseline and pairs are interleaved
(baseline, pairs, baseline, pairs) and each is summarised by the median run, to damp a noisy neighbour.

    uv run python -m bench.credits [--pairs 2000] [--inserts 4000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import uuid
from pathlib import Path

import asyncpg

import lumiku_credits
from bench.lib import Stats, measure, report
from lumiku_common.clients.credits import CaptureRequest, ReserveRequest
from lumiku_common.db import Database
from lumiku_common.migrations import upgrade
from lumiku_credits import service
from lumiku_credits.schemas import GrantRequest
from lumiku_credits.settings import CreditsSettings

DATABASE = "lumiku_credits_bench"
MIGRATIONS = Path(lumiku_credits.__file__).parent / "migrations"


def raw_url(settings: CreditsSettings, database: str = "postgres") -> str:
    return f"{settings.postgres_url.replace('postgresql+asyncpg', 'postgresql').rstrip('/')}/{database}"


async def recreate_database(settings: CreditsSettings) -> None:
    conn = await asyncpg.connect(raw_url(settings))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    await upgrade(MIGRATIONS, settings.database_url)
    conn = await asyncpg.connect(raw_url(settings, DATABASE))
    try:
        await conn.execute("CREATE TABLE bench_rows (id bigserial PRIMARY KEY, payload text NOT NULL)")
    finally:
        await conn.close()


async def fund(db: Database, settings: CreditsSettings, users: list[str]) -> None:
    for user in users:
        body = GrantRequest(
            user_id=user, amount=1_000_000, type="purchase", description="bench", idempotency_key=f"fund-{user}"
        )
        async with db.unit_of_work() as session:
            await service.grant(session, settings, body, granted_by="bench")


def pair_operation(db: Database, settings: CreditsSettings, users: list[str], run: str):
    async def pair(i: int) -> None:
        key = f"{run}-{i}"
        reserve = ReserveRequest(
            user_id=users[i % len(users)],
            amount=15,
            reference_id=key,
            reference_type="avatar_generation",
            description="bench generation",
            idempotency_key=f"r-{key}",
        )
        async with db.unit_of_work() as session:
            hold_id = (await service.reserve(session, settings, reserve)).body["hold"]["id"]
        async with db.unit_of_work() as session:
            await service.capture(session, hold_id, CaptureRequest(idempotency_key=f"c-{key}"))

    return pair


def insert_operation(pool: asyncpg.Pool):
    async def insert(i: int) -> None:
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO bench_rows (payload) VALUES ($1)", f"row-{i}")  # autocommit: one commit

    return insert


async def baseline(settings: CreditsSettings, concurrency: int, inserts: int) -> Stats:
    # Its own pool, closed after: the machine's PostgreSQL is shared, so never hold 64 connections at once.
    pool = await asyncpg.create_pool(raw_url(settings, DATABASE), min_size=concurrency, max_size=concurrency)
    try:
        return await measure("raw INSERT+COMMIT", insert_operation(pool), concurrency=concurrency, requests=inserts)
    finally:
        await pool.close()


async def pairs_run(
    db: Database, settings: CreditsSettings, users: list[str], name: str, concurrency: int, requests: int
) -> Stats:
    op = pair_operation(db, settings, users, uuid.uuid4().hex[:8])
    try:
        return await measure(name, op, concurrency=concurrency, requests=requests)
    finally:
        await db.engine.dispose()


async def run(pairs: int, inserts: int, concurrency: int) -> None:
    settings = CreditsSettings(database_name=DATABASE, environment="development", log_level="WARNING")
    await recreate_database(settings)
    db = Database(settings.database_url, "credits", pool_size=concurrency // 2)
    spread = [f"user-{n}" for n in range(concurrency)]
    try:
        await fund(db, settings, [*spread, "hot"])
        baseline_runs, pair_runs = [], []
        for _ in range(2):
            baseline_runs.append(await baseline(settings, concurrency, inserts))
            pair_runs.append(await pairs_run(db, settings, spread, "reserve+capture pair", concurrency, pairs))
        hot = await pairs_run(db, settings, ["hot"], "reserve+capture, one wallet", concurrency, pairs // 4)
        await verify(settings)
    finally:
        await db.dispose()
    raw_tps = statistics.median(s.throughput for s in baseline_runs)
    pair_tps = statistics.median(s.throughput for s in pair_runs)
    report(
        "credits",
        [*baseline_runs, *pair_runs, hot],
        {
            "pairs_per_raw_commit": pair_tps / raw_tps,
            "transactions_per_raw_commit": 2 * pair_tps / raw_tps,
            "one_wallet_pairs_per_raw_commit": hot.throughput / raw_tps,
        },
        notes={
            "mode": "service layer in-process (no HTTP), units of work as in the API; outbox relay not running",
            "concurrency": concurrency,
            "pairs_per_second": pair_tps,
            "raw_commits_per_second": raw_tps,
            "one_wallet_pairs_per_second": hot.throughput,
            "summary": "median of 2 interleaved runs each",
        },
    )


async def verify(settings: CreditsSettings) -> None:
    """A benchmark that broke the books would be measuring the wrong thing."""
    conn = await asyncpg.connect(raw_url(settings, DATABASE))
    try:
        wrong = await conn.fetchval(
            """SELECT count(*) FROM wallets w
                WHERE w.balance <> (SELECT coalesce(sum(amount), 0) FROM ledger_entries l WHERE l.user_id = w.user_id)
                   OR w.balance < 0"""
        )
        active = await conn.fetchval("SELECT count(*) FROM holds WHERE status = 'active'")
    finally:
        await conn.close()
    if wrong or active:
        raise SystemExit(f"ledger check failed: {wrong} wallets off, {active} holds left active")


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.credits")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--inserts", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.pairs, args.inserts, args.concurrency))


if __name__ == "__main__":
    main()
