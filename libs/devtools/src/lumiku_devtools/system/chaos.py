"""The fault schedule, run beside the load: three tracks at once, each spreading its faults over the load's
duration. Processes: every API, every worker process and the gateway SIGKILLed once and restarted (a process
that dies while starting, e.g. migrating during a database cut, is started again, as an orchestrator would).
Links: PostgreSQL and RabbitMQ cut (TCP proxies in front of the shared servers) for `cut_seconds`. Provider:
bursts of 503 "loading", 429 and hanging answers from the stand-in. Each fault is recorded as a `Window`."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lumiku_devtools.fake_hf import FakeHuggingFace
from lumiku_devtools.processes import Process
from lumiku_devtools.system.timeline import Window
from lumiku_devtools.testing import TcpProxy

RESTART_TIMEOUT = 240.0  # a busy 2-core machine has taken 45 s to start one process
PROVIDER_BURSTS = ("loading:0.5", "rate:1", "hang:6")  # hang: longer than generation's provider timeout


class Chaos:
    def __init__(
        self,
        processes: dict[str, Process],
        proxies: dict[str, TcpProxy],
        fake: FakeHuggingFace,
        seed: int,
        cut_seconds: float = 5.0,
        burst_seconds: float = 4.0,
    ):
        self.processes, self.proxies, self.fake = processes, proxies, fake
        self.random = random.Random(seed)
        self.cut_seconds, self.burst_seconds = cut_seconds, burst_seconds
        self.windows: list[Window] = []
        self.restarts: dict[str, int] = {}  # starts needed before a killed process was ready again
        self.unrecovered: list[str] = []  # killed and never ready again within RESTART_TIMEOUT

    async def run(self, seconds: float) -> None:
        names = list(self.processes)
        self.random.shuffle(names)
        links = [name for _ in range(2) for name in self.proxies]
        # Three kill tracks: a restart takes several seconds on a busy machine, one track would overrun the load.
        await asyncio.gather(
            *(self._spread(seconds, [partial(self.kill, n) for n in names[i::3]]) for i in range(3)),
            self._spread(seconds, [partial(self.cut, n) for n in links]),
            self._spread(seconds, [partial(self.burst, b) for b in PROVIDER_BURSTS]),
        )

    async def _spread(self, seconds: float, faults: Sequence[Callable[[], Awaitable[None]]]) -> None:
        """One fault per slot, at a random moment in the first half of it: the track ends within `seconds`
        unless a restart runs long."""
        slot = seconds / len(faults)
        start = time.monotonic()
        for i, fault in enumerate(faults):
            await asyncio.sleep(max(0.0, start + slot * i + self.random.uniform(0, slot / 2) - time.monotonic()))
            await fault()

    async def kill(self, name: str) -> None:
        process = self.processes[name]
        began = time.monotonic()
        process.stop()  # SIGKILL
        await asyncio.sleep(self.random.uniform(0.5, 2.0))
        before = process.starts
        process.start()
        try:
            await process.wait_ready(RESTART_TIMEOUT)  # respawns it while it dies starting
        except AssertionError:
            self.unrecovered.append(name)  # reported as a failure; the rest of the run goes on without it
        self.restarts[name] = process.starts - before
        self.windows.append(Window("kill", name, began, time.monotonic()))

    async def cut(self, name: str) -> None:
        proxy = self.proxies[name]
        began = time.monotonic()
        proxy.cut()
        await asyncio.sleep(self.cut_seconds)
        proxy.restore()
        self.windows.append(Window("cut", name, began, time.monotonic()))

    async def burst(self, answer: str) -> None:
        began = time.monotonic()
        self.fake.mode = answer
        await asyncio.sleep(self.burst_seconds)
        self.fake.mode = "ok"
        # A hanging answer is still being waited for until the provider timeout ends it.
        self.windows.append(Window("provider", f"provider:{answer}", began, time.monotonic()))


async def watch_database_room(engine: AsyncEngine, windows: list[Window], stop: asyncio.Event) -> None:
    """Records when the shared PostgreSQL has no connection left for anyone (other test runs share it): that is an
    outage too, but the environment's, not one of ours; the report counts these windows apart."""
    full_since: float | None = None
    query = text(
        "SELECT count(*) >= current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int FROM pg_stat_activity"
    )
    while not stop.is_set():
        try:
            async with engine.connect() as conn:
                full = bool((await conn.execute(query)).scalar())
        except Exception:  # our own connection refused: full as well
            full = True
        now = time.monotonic()
        if full and full_since is None:
            full_since = now
        elif not full and full_since is not None:
            windows.append(Window("environment", "postgres-full", full_since, now))
            full_since = None
        await asyncio.sleep(0.5)
    if full_since is not None:
        windows.append(Window("environment", "postgres-full", full_since, time.monotonic()))
