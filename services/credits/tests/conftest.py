from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

import lumiku_credits
from lumiku_common.auth import SERVICE_TOKEN_HEADER, ServiceTokens
from lumiku_credits.handlers import QUEUE
from lumiku_credits.main import create_app
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.gateway import gateway_for
from lumiku_devtools.testing import EventSpy, auth, delete_queues, prepare_database, settings_for_tests

MIGRATIONS = Path(lumiku_credits.__file__).parent / "migrations"
HOLDS = "/internal/credits/holds"


@pytest.fixture(scope="session")
async def settings() -> AsyncIterator[CreditsSettings]:
    settings = settings_for_tests(CreditsSettings, credits_sweep_seconds=3600)
    yield settings
    await delete_queues(settings, QUEUE)


@dataclass
class Credits:
    """The credits service as its callers see it: `api` through the gateway, `internal` with a service token."""

    api: httpx.AsyncClient
    internal: httpx.AsyncClient
    app: FastAPI
    settings: CreditsSettings

    async def reserve(self, user: str, amount: int, key: str, **extra: Any) -> httpx.Response:
        body = {
            "userId": user,
            "amount": amount,
            "referenceId": f"ref-{key}",
            "referenceType": "avatar_generation",
            "description": f"Generate avatar {key}",
            "idempotencyKey": key,
            **extra,
        }
        return await self.internal.post(HOLDS, json=body)

    async def hold(self, user: str, amount: int, key: str, **extra: Any) -> dict[str, Any]:
        response = await self.reserve(user, amount, key, **extra)
        assert response.status_code == 201, response.text
        hold: dict[str, Any] = response.json()["hold"]
        return hold

    async def capture(self, hold_id: str, key: str, amount: int | None = None) -> httpx.Response:
        body: dict[str, Any] = {"idempotencyKey": key}
        if amount is not None:
            body["amount"] = amount
        return await self.internal.post(f"{HOLDS}/{hold_id}/capture", json=body)

    async def release(self, hold_id: str, key: str, reason: str = "generation failed") -> httpx.Response:
        return await self.internal.post(f"{HOLDS}/{hold_id}/release", json={"idempotencyKey": key, "reason": reason})

    async def balance(self, user: str) -> dict[str, Any]:
        response = await self.api.get("/api/credits/balance", headers=auth(self.settings, user))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def grant(self, body: dict[str, Any], role: str = "admin") -> httpx.Response:
        return await self.api.post("/api/credits/grants", json=body, headers=auth(self.settings, "root", role))  # type: ignore[arg-type]


@pytest.fixture
async def credits(settings: CreditsSettings) -> AsyncIterator[Credits]:
    await prepare_database(settings, MIGRATIONS)
    app = create_app(settings)
    token = ServiceTokens(settings.service_token_secret, "tests").token()
    async with gateway_for({"credits": app}) as api:
        # The gateway started the app; a second transport reaches its internal routes, as a sibling service does.
        transport = httpx.ASGITransport(app=app)
        headers = {SERVICE_TOKEN_HEADER: token}
        internal = httpx.AsyncClient(transport=transport, base_url="http://credits", headers=headers, timeout=60)
        async with internal:
            yield Credits(api, internal, app, settings)


@pytest.fixture
async def db(settings: CreditsSettings) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for asserting on (and tampering with) the rows themselves."""
    conn = await asyncpg.connect(settings.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def spy(settings: CreditsSettings) -> AsyncIterator[EventSpy]:
    async with EventSpy(settings.amqp_url, settings.events_exchange, "credits.#") as spy:
        yield spy


@pytest.fixture
def check_ledger(db: asyncpg.Connection) -> Callable[[], Awaitable[None]]:
    return lambda: ledger_matches_wallets(db)


async def ledger_matches_wallets(db: asyncpg.Connection) -> None:
    """The ledger's sum is every wallet's balance, the running balances chain, and nothing is negative."""
    rows = await db.fetch(
        """
        SELECT w.user_id, w.balance, coalesce(sum(l.amount), 0) AS total
          FROM wallets w LEFT JOIN ledger_entries l ON l.user_id = w.user_id
         GROUP BY w.user_id, w.balance
        """
    )
    for row in rows:
        assert row["balance"] == row["total"], dict(row)
        assert row["balance"] >= 0
    broken = await db.fetchval(
        """
        SELECT count(*) FROM (
          SELECT balance_after, amount,
                 lag(balance_after, 1, 0::bigint) OVER (PARTITION BY user_id ORDER BY seq) AS before
            FROM ledger_entries) t
         WHERE balance_after <> before + amount
        """
    )
    assert broken == 0
    overcommitted = await db.fetchval(
        """
        SELECT count(*) FROM wallets w
         WHERE w.balance < (SELECT coalesce(sum(amount), 0) FROM holds h
                             WHERE h.user_id = w.user_id AND h.status = 'active' AND h.expires_at > now())
        """
    )
    assert overcommitted == 0
