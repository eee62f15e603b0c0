"""Credits holds as /metrics shows them: active, overdue (past expiry, not yet swept), expired by the sweep."""

from __future__ import annotations

import asyncio

import httpx

from lumiku_credits.main import create_app
from lumiku_devtools.testing import Metrics, eventually, running

REFRESH = {"metrics_refresh_seconds": 0.05}


async def gauges(client: httpx.AsyncClient, active: int, overdue: int) -> Metrics:
    async def refreshed() -> Metrics | None:
        metrics = await Metrics.scrape(client)
        found = (metrics.value("lumiku_credits_holds_active"), metrics.value("lumiku_credits_holds_overdue"))
        return metrics if found == (active, overdue) else None

    return await eventually(refreshed, what=f"{active} active and {overdue} overdue holds measured")


async def test_holds_active_overdue_and_expired_are_measured(settings, credits, spy):
    # Its one sweep runs at start-up, before the hold below expires; the next would be an hour later.
    async with running(create_app(settings.model_copy(update=REFRESH))) as client:
        await credits.hold("alice", 15, "gen-1", ttlSeconds=1)
        await credits.hold("alice", 15, "gen-2")
        await asyncio.sleep(1.05)
        unswept = await gauges(client, active=1, overdue=1)
    expired_before = unswept.value("lumiku_credits_holds_expired_total") or 0

    async with running(create_app(settings.model_copy(update={**REFRESH, "credits_sweep_seconds": 0.05}))) as client:
        await spy.wait_for("credits.released")
        swept = await gauges(client, active=1, overdue=0)
    assert (swept.value("lumiku_credits_holds_expired_total") or 0) - expired_before == 1
