"""The limiter's Redis calls, on the real Redis: requests checking in the same turn of the event loop share one
call, far from a limit most requests pass on what was counted ahead for them, and the limit holds exactly in one
process and is never passed across several."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from lumiku_common.errors import RateLimited
from lumiku_devtools.testing import RUN_ID, settings_for_tests
from lumiku_gateway.limits import GRANT_MAX, GRANT_SHARE, RateLimiter, _Counter
from lumiku_gateway.routes import APP
from lumiku_gateway.settings import GatewaySettings

CREATE = ("POST", f"{APP}/projects")  # the rules `api` and `create-project`
READ = ("GET", f"{APP}/projects")  # the rule `api` alone


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(settings_for_tests(GatewaySettings).redis_url)
    try:
        yield client
    finally:
        await client.aclose()


class Calls:
    """Records each script call a limiter makes: the keys it counted."""

    def __init__(self, limiter: RateLimiter):
        self.keys: list[list[str]] = []
        counter = counter_of(limiter)
        script = counter._script

        async def recorded(keys: list[str], args: list[Any]) -> Any:
            self.keys.append(keys)
            return await script(keys=keys, args=args)

        counter._script = recorded  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.keys)


def counter_of(limiter: RateLimiter) -> _Counter:
    assert limiter._count is not None
    return limiter._count.__self__  # type: ignore[attr-defined, no-any-return]


async def checked(limiter: RateLimiter, user: str, request: tuple[str, str] = CREATE) -> str:
    try:
        await limiter.check(user, *request)
    except RateLimited:
        return "limited"
    return "passed"


@pytest.mark.parametrize("burst", [1, 25])
async def test_a_burst_in_one_turn_is_one_call_and_counted_exactly(redis: Redis, burst: int):
    limiter = RateLimiter(redis, {"api": "1000/60", "create-project": "10/3600"})
    calls = Calls(limiter)
    user = f"turn-{burst}-{RUN_ID}"
    results = await asyncio.gather(*(checked(limiter, user) for _ in range(burst)))
    after = await checked(limiter, user)
    assert results.count("passed") == min(burst, 10) and results.count("limited") == max(0, burst - 10)
    assert len(calls.keys[0]) == 2  # both rules' windows, once each, for the whole burst
    assert after == ("limited" if burst >= 10 else "passed")
    if burst == 1:  # far from both limits: the next request passes on what the first call counted ahead
        assert len(calls) == 1
    else:  # create-project's window is full: asked again; the api window's grant still serves
        assert len(calls) == 2 and calls.keys[1] == [key for key in calls.keys[0] if ":create-project:" in key]


async def test_far_from_the_limit_most_requests_pass_without_a_call(redis: Redis):
    limiter = RateLimiter(redis, {"api": "100000/60"})
    calls = Calls(limiter)
    user = f"far-{RUN_ID}"
    results = [await checked(limiter, user, READ) for _ in range(330)]
    assert results == ["passed"] * 330
    assert len(calls) == 10  # one call for every 1 + GRANT_MAX requests
    [key] = {key for keys in calls.keys for key in keys}
    held = counter_of(limiter)._granted.get(key, (0, 0.0))[0]
    assert int(await redis.get(key) or 0) == 330 + held  # Redis holds every request, and those counted ahead


@pytest.mark.parametrize("limit", [1, 7, 8, 9, 50, 100, 333])
async def test_one_process_passes_exactly_the_limit(redis: Redis, limit: int):
    limiter = RateLimiter(redis, {"api": f"{limit}/3600"})
    user = f"exact-{limit}-{RUN_ID}"
    results = [await checked(limiter, user, READ) for _ in range(limit + 5)]
    assert results == ["passed"] * limit + ["limited"] * 5


async def test_grants_shrink_to_none_as_the_window_fills(redis: Redis):
    limiter = RateLimiter(redis, {"api": "200/3600"})
    calls = Calls(limiter)
    user = f"shrink-{RUN_ID}"
    counted = [await redis.get(f"unused-{RUN_ID}")]  # a first, empty reading
    for _ in range(200):
        before = len(calls)
        await checked(limiter, user, READ)
        if len(calls) > before:
            counted.append(await redis.get(calls.keys[-1][0]))
    totals = [int(total or 0) for total in counted]
    # Each call counts its request, then grants an eighth of what is left, at most GRANT_MAX.
    for before, after in itertools.pairwise(totals):
        assert after - (before + 1) == min(GRANT_MAX, (200 - (before + 1)) // GRANT_SHARE)
    assert totals[-1] == 200 and totals[-1] - totals[-2] == 1  # the last requests asked one by one
    assert len(calls) == len(totals) - 1 < 40


async def test_several_replicas_never_pass_more_than_the_limit(redis: Redis):
    """Three processes' limiters on one Redis, a user's requests spread over them, in bursts and one by one."""
    limit = 120
    replicas = [RateLimiter(redis, {"api": f"{limit}/3600"}) for _ in range(3)]
    user = f"replicas-{RUN_ID}"
    passed = 0
    for round_ in range(40):
        bursts = [checked(replica, user, READ) for replica in replicas for _ in range(round_ % 4 + 1)]
        passed += (await asyncio.gather(*bursts)).count("passed")
    assert passed <= limit
    # Refused early by at most what the others still hold, each at most an eighth of the rest when granted.
    held = sum(held for replica in replicas for held, _ in counter_of(replica)._granted.values())
    assert passed + held == limit and held <= 2 * limit // GRANT_SHARE


async def test_a_grant_is_spent_only_in_its_own_window(redis: Redis, monkeypatch: pytest.MonkeyPatch):
    limiter = RateLimiter(redis, {"api": "1000/60"})
    calls = Calls(limiter)
    now = [6000.0]
    monkeypatch.setattr("lumiku_gateway.limits.time.time", lambda: now[0])
    user = f"windows-{RUN_ID}"
    for at in (6000.0, 6001.0, 6060.5, 6061.0):  # a window counted and granted ahead, then its grant; twice
        now[0] = at
        assert await checked(limiter, user, READ) == "passed"
    assert [keys[0].rsplit(":", 1)[1] for keys in calls.keys] == ["6000", "6060"]
    now[0] = 6200.0  # window 6180: its call sweeps the grants of windows gone
    await checked(limiter, user, READ)
    assert [key.rsplit(":", 1)[1] for key in counter_of(limiter)._granted] == ["6180"]


async def test_a_failed_count_reaches_every_request_that_waited_for_it(redis: Redis):
    limiter = RateLimiter(redis, {"api": "1000/60"})
    counter = counter_of(limiter)

    async def broken(keys: list[str], args: list[Any]) -> Any:
        raise ValueError("not a count")

    counter._script = broken  # type: ignore[assignment]
    user = f"broken-{RUN_ID}"
    results = await asyncio.wait_for(
        asyncio.gather(*(limiter.check(user, *READ) for _ in range(3)), return_exceptions=True), timeout=5
    )
    assert [type(r) for r in results] == [ValueError] * 3
    assert counter._drainer is None and counter._waiting == []
