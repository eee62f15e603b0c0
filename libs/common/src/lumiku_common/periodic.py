"""Background loops of a service (pruning, purging, sweeping), written once.

A loop runs its step, waits `interval` seconds (with jitter, so replicas started together do not run in step
with each other), and runs it again; a step that reports more work waiting runs again at once. A failing step
never ends the loop: the failure is logged, at most once per `error_log_seconds` while it keeps failing (with a
count of the failures in between), and the step is tried again at the next tick.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

from lumiku_common.logs import get_logger

log = get_logger(__name__)

# A step returns True when more work is already waiting (run again at once); anything else waits.
Step = Callable[[], Awaitable[object]]


class _FailureLog:
    """Logs the first failure of a run of failures, then at most once per `every` seconds, then the recovery."""

    def __init__(self, name: str, every: float):
        self.name, self.every = name, every
        self.failures, self.suppressed, self.logged_at = 0, 0, float("-inf")

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self.logged_at < self.every:
            self.suppressed += 1
            return
        log.warning(
            "background_step_failed",
            loop=self.name,
            error=repr(exc),
            failures=self.failures,
            suppressed=self.suppressed,
        )
        self.logged_at, self.suppressed = now, 0

    def succeeded(self) -> None:
        if self.failures:
            log.info("background_step_recovered", loop=self.name, failures=self.failures)
        self.failures, self.suppressed, self.logged_at = 0, 0, float("-inf")


async def periodic(
    name: str,
    step: Step,
    interval: float,
    *,
    wake: asyncio.Event | None = None,
    first_delay: float = 0.0,
    jitter: float = 0.1,
    error_log_seconds: float = 60.0,
) -> None:
    """Runs `step` forever: every `interval` seconds (± `jitter` of it), or as soon as `wake` is set."""
    failures = _FailureLog(name, error_log_seconds)
    delay = first_delay
    while True:
        await _pause(delay, wake)
        try:
            more = await step() is True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.failed(exc)
            more = False
        else:
            failures.succeeded()
        delay = 0.0 if more else interval * (1 + random.uniform(-jitter, jitter))


async def _pause(seconds: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(seconds)
        return
    if seconds > 0:
        with suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=seconds)
    wake.clear()
