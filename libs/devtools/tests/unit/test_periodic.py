"""The one background-loop helper: cadence, wake-ups, more-work-at-once, and failures that never end it."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from structlog.testing import capture_logs

from lumiku_common.periodic import periodic


async def _run_for(seconds: float, loop: asyncio.Future[None] | asyncio.Task[None]) -> None:
    await asyncio.sleep(seconds)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop


async def test_runs_at_once_then_every_interval():
    calls: list[float] = []

    async def step() -> None:
        calls.append(asyncio.get_running_loop().time())

    await _run_for(0.35, asyncio.ensure_future(periodic("t", step, 0.1, jitter=0)))
    assert 3 <= len(calls) <= 5
    assert all(0.08 <= b - a <= 0.2 for a, b in itertools.pairwise(calls))


async def test_a_step_with_more_work_runs_again_at_once():
    backlog = [True, True, True, None]
    calls = 0

    async def step() -> bool | None:
        nonlocal calls
        calls += 1
        return backlog.pop(0) if backlog else None

    await _run_for(0.2, asyncio.ensure_future(periodic("t", step, 10)))
    assert calls == 4  # three full batches and the one that emptied the backlog, no waiting in between


async def test_wake_runs_the_step_before_the_interval():
    wake, calls = asyncio.Event(), 0

    async def step() -> None:
        nonlocal calls
        calls += 1

    loop = asyncio.ensure_future(periodic("t", step, 60, wake=wake, first_delay=60))
    await asyncio.sleep(0.05)
    assert calls == 0
    wake.set()
    await asyncio.sleep(0.05)
    assert calls == 1
    await _run_for(0, loop)


async def test_failures_never_end_the_loop_and_are_logged_with_a_bound():
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 8:
            raise RuntimeError("storage is down")

    with capture_logs() as logs:
        await _run_for(0.5, asyncio.ensure_future(periodic("t", step, 0.02, jitter=0, error_log_seconds=60)))
    failed = [line for line in logs if line["event"] == "background_step_failed"]
    recovered = [line for line in logs if line["event"] == "background_step_recovered"]
    assert calls > 9  # it kept going after eight failures
    assert len(failed) == 1 and len(recovered) == 1  # one line for the whole run of failures, one for recovery
    assert recovered[0]["failures"] == 8
