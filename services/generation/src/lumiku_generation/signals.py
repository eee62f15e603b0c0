"""Wake-ups for the streams and synchronous waits of this process: one LISTEN connection per process, fanned
out to everyone watching a job. Events are appended with NOTIFY in the transaction that makes them (delivered
at commit, from any process: the workers are usually elsewhere). Watchers also poll now and then, so a lost
connection costs latency, never an event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg
from sqlalchemy.engine import make_url

from lumiku_common.logs import get_logger
from lumiku_generation.repository import NOTIFY_CHANNEL

log = get_logger(__name__)


class Signals:
    def __init__(self, database_url: str):
        self.dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.watchers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self.watchers.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            found = self.watchers.get(job_id)
            if found is not None:
                found.discard(event)
                if not found:
                    del self.watchers[job_id]

    def _notified(self, _connection: object, _pid: int, _channel: str, job_id: str) -> None:
        for event in self.watchers.get(job_id, ()):
            event.set()

    async def run(self) -> None:
        while True:
            try:
                connection = await asyncpg.connect(self.dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("generation_listener_unavailable", error=repr(exc))
                await asyncio.sleep(2)
                continue
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _, lost=lost: lost.set())
            try:
                await connection.add_listener(NOTIFY_CHANNEL, self._notified)
                for events in self.watchers.values():  # anything may have happened while we were away
                    for event in events:
                        event.set()
                await lost.wait()
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="generation-signals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
