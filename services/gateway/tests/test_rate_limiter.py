"""The limiter's Redis calls, on the real Redis: requests checking in the same turn of the event loop share one
call, and each is still counted exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from lumiku_common.errors import RateLimited
from lumiku_devtools.testing import RUN_ID, settings_for_tests
from lumiku_gateway.limits import RateLimiter
from lumiku_gateway.routes import APP
from lumiku_gateway.settings import GatewaySettings


async def _checked(limiter: RateLimiter, user: str) -> str:
    try:
        await limiter.check(user, "POST", f"{APP}/projects")
    except RateLimited:
        return "limited"
    return "passed"


@pytest.mark.parametrize("burst", [1, 25])
async def test_a_burst_in_one_turn_is_one_call_and_counted_exactly(burst: int):
    redis = Redis.from_url(settings_for_tests(GatewaySettings).redis_url)
    limiter = RateLimiter(redis, {"api": "1000/60", "create-project": "10/3600"})
    counter = limiter._count.__self__  # type: ignore[union-attr]
    calls: list[int] = []
    script = counter._script

    async def counted(keys: list[str], args: list[Any]) -> Any:
        calls.append(len(keys))
        return await script(keys=keys, args=args)

    counter._script = counted
    try:
        user = f"turn-{burst}-{RUN_ID}"
        results = await asyncio.gather(*(_checked(limiter, user) for _ in range(burst)))
        after = await _checked(limiter, user)
    finally:
        await redis.aclose()
    assert results.count("passed") == min(burst, 10) and results.count("limited") == max(0, burst - 10)
    assert calls[0] == 2 * burst  # two rules each: one call for the whole burst
    assert len(calls) == 2 and after == ("limited" if burst >= 10 else "passed")
