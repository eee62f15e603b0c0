"""Transactional outbox: events are rows written with the change; a relay publishes them with confirms.

Several relays may run (one per replica): `FOR UPDATE SKIP LOCKED` hands each pending row to exactly one.
While the broker is down rows stay pending and the relay retries with backoff; nothing is lost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy import BigInteger, Text, any_, bindparam, cast, delete, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common import metrics, tracing
from lumiku_common.context import causation_id_var, child_traceparent, correlation_id_var, traceparent_var
from lumiku_common.db import Database, DriverWork, Query, utcnow
from lumiku_common.logs import get_logger
from lumiku_common.messaging.broker import Broker, Outgoing
from lumiku_common.messaging.events import COMMAND_TYPES, Envelope, Event, envelope_for
from lumiku_common.messaging.tables import outbox

log = get_logger(__name__)

NOTIFY_CHANNEL = "lumiku_outbox"


# Where events are staged: a session's unit of work, or one on the driver connection (hot writes).
UnitOfWork = AsyncSession | DriverWork


async def add_event(work: UnitOfWork, event: Event, *, user_id: str | None, subject: str | None = None) -> Envelope:
    """Stage `event` in the current unit of work; it is published only if the transaction commits."""
    envelope, row = outbox_row(work, event, user_id=user_id, subject=subject)
    await add_events(work, [row])
    return envelope


def outbox_row(
    work: UnitOfWork, event: Event, *, user_id: str | None, subject: str | None = None
) -> tuple[Envelope, dict[str, Any]]:
    """The envelope of `event` and its outbox row, in the current correlation context (not written yet)."""
    envelope = envelope_for(
        event,
        source=work.source if isinstance(work, DriverWork) else work.info.get("source", "unknown"),
        time=utcnow(),
        user_id=user_id,
        subject=subject,
        correlation_id=correlation_id_var.get(),
        causation_id=causation_id_var.get(),
    )
    headers = {
        "x-correlation-id": envelope.correlation_id or envelope.id,
        # The span writing the row when tracing is on, so the relay's publish joins the request's trace.
        "traceparent": tracing.current_traceparent() or child_traceparent(traceparent_var.get()),
    }
    row = {
        "event_id": envelope.id,
        "routing_key": envelope.type,
        "body": envelope.model_dump_json(),  # pydantic's JSON text, stored as jsonb by PostgreSQL
        "headers": json.dumps(headers),
    }
    return envelope, row


# One statement of fixed text for any number of rows: the columns travel as arrays (encoded by asyncpg in C), so
# a batch costs neither SQLAlchemy's per-value parameter processing nor a new prepared statement per size.
_INSERT = """
    INSERT INTO outbox (event_id, routing_key, body, headers)
    SELECT event_id, routing_key, CAST(body AS jsonb), CAST(headers AS jsonb)
    FROM unnest(CAST(:event_ids AS varchar[]), CAST(:routing_keys AS varchar[]), CAST(:bodies AS text[]),
                CAST(:headers AS text[])) AS staged(event_id, routing_key, body, headers)
"""
_STAGE = text(_INSERT)
# The first rows of a transaction also wake the relays, in the same round trip: a notification is delivered at
# commit, and only then, to every relay listening on this database, in any process. (A data-modifying WITH runs
# once whether or not the query reads it.)
_STAGE_AND_NOTIFY = text(f"WITH staged AS ({_INSERT} RETURNING 1) SELECT pg_notify('{NOTIFY_CHANNEL}', '')")


_STAGE_ON_DRIVER, _STAGE_AND_NOTIFY_ON_DRIVER = Query(_STAGE), Query(_STAGE_AND_NOTIFY)


async def add_events(work: UnitOfWork, rows: list[dict[str, Any]]) -> None:
    """Stages outbox rows (`outbox_row`) in one statement: a batch of events costs one round trip."""
    if not rows:
        return
    columns = {
        "event_ids": [r["event_id"] for r in rows],
        "routing_keys": [r["routing_key"] for r in rows],
        "bodies": [r["body"] for r in rows],
        "headers": [r["headers"] for r in rows],
    }
    if isinstance(work, DriverWork):
        notify = work.notify_outbox and not work.outbox_written
        await work.execute(_STAGE_AND_NOTIFY_ON_DRIVER if notify else _STAGE_ON_DRIVER, **columns)
        work.outbox_written = True
        return
    notify = bool(work.info.get("notify_outbox")) and not work.info.get("outbox_written")
    await work.execute(_STAGE_AND_NOTIFY if notify else _STAGE, columns)
    work.info["outbox_written"] = True


_IDS = ARRAY(BigInteger)
# The bodies and headers as PostgreSQL's JSON text: a body is published as is, never decoded and encoded again.
_CLAIM = Query(
    select(
        outbox.c.id,
        outbox.c.event_id,
        outbox.c.routing_key,
        cast(outbox.c.body, Text).label("body"),
        cast(outbox.c.headers, Text).label("headers"),
    )
    .where(outbox.c.published_at.is_(None))
    .order_by(outbox.c.id)
    .limit(bindparam("batch_size"))
    .with_for_update(skip_locked=True)
)
_MARK_PUBLISHED = Query(  # the time of the confirm, not of the claim's transaction (`now()`)
    update(outbox).where(outbox.c.id == any_(bindparam("ids", type_=_IDS))).values(published_at=func.clock_timestamp())
)
_MARK_FAILED = Query(
    update(outbox)
    .where(outbox.c.id == any_(bindparam("ids", type_=_IDS)))
    .values(attempts=outbox.c.attempts + literal_column("1"), last_error=bindparam("error"))
)


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        batch_size: int = 100,
        poll_seconds: float = 0.5,
        max_backoff: float = 5.0,
        service: str = "unknown",
        linger: float = 0.0,
    ):
        self.db, self.broker, self.service, self.linger = db, broker, service, linger
        self._published = metrics.OUTBOX_PUBLISHED.labels(service)
        self._failures = metrics.OUTBOX_PUBLISH_FAILURES.labels(service)
        self.batch_size, self.poll_seconds, self.max_backoff = batch_size, poll_seconds, max_backoff

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="outbox-listener")
        try:
            await self._relay()
        finally:
            listener.cancel()
            with suppress(asyncio.CancelledError):
                await listener

    async def _relay(self) -> None:
        backoff = 0.1
        while True:
            try:
                published = await self.publish_pending()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox_publish_failed", error=repr(exc), retryIn=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if published < self.batch_size:
                await self._wait_for_work()
                if published and self.linger:  # writes are streaming in: let the next few join this batch
                    await asyncio.sleep(self.linger)

    async def _listen(self) -> None:
        """Wakes the relay on commits made by any process (API replicas without workers included).
        Polling still runs underneath, so a lost listener only costs latency."""
        dsn = make_url(self.db.url).set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                connection = await asyncpg.connect(dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox_listener_unavailable", error=repr(exc))
                await asyncio.sleep(5)
                continue
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _, lost=lost: lost.set())
            try:
                await connection.add_listener(NOTIFY_CHANNEL, lambda *_: self.db.outbox_signal.set())
                await lost.wait()
            finally:
                with suppress(Exception):
                    await connection.close()

    async def _wait_for_work(self) -> None:
        signal = self.db.outbox_signal
        with suppress(TimeoutError):
            await asyncio.wait_for(signal.wait(), timeout=self.poll_seconds)
        signal.clear()

    async def publish_pending(self) -> int:
        """Publishes one batch; returns how many rows it published. Raises if any publish failed.

        Confirmed rows are marked even when others in the batch fail, so a broker outage mid-batch
        re-sends only what the broker never confirmed. Runs on the driver connection (see `Database.fetch`):
        a cycle per commit under light load, where SQLAlchemy's session cost more than the statements.
        """
        async with self.db.driver() as connection, connection.transaction():
            rows = await _CLAIM.fetch(connection, batch_size=self.batch_size)
            if not rows:
                return 0
            results = await self._publish(rows)
            done = [row["id"] for row, result in zip(rows, results, strict=True) if result is None]
            failed = [row["id"] for row, result in zip(rows, results, strict=True) if result is not None]
            if done:
                await _MARK_PUBLISHED.execute(connection, ids=done)
            error = next((r for r in results if isinstance(r, BaseException)), None)
            self._published.inc(len(done))
            self._failures.inc(len(failed))
            if failed:
                await _MARK_FAILED.execute(connection, ids=failed, error=repr(error)[:1000])
        if error is not None:
            raise error
        return len(done)

    async def _publish(self, rows: Sequence[Any]) -> list[BaseException | None]:
        """The whole batch sent at once, its confirms awaited together (one publish span per row, open until
        its confirm); per row, None if the broker confirmed it."""
        with ExitStack() as spans:
            messages = [
                Outgoing(
                    row["body"].encode(),
                    row["routing_key"],
                    row["event_id"],
                    spans.enter_context(
                        tracing.publishing(row["routing_key"], json.loads(row["headers"]), self.service)
                    ),
                    # A command no queue takes yet stays pending (its consumer declares the queue when it starts).
                    must_route=row["routing_key"] in COMMAND_TYPES,
                )
                for row in rows
            ]
            try:
                return await self.broker.publish_many(messages)
            except Exception as exc:  # nothing was sent (no connection, channel closed)
                return [exc] * len(rows)


async def pending(db: Database) -> tuple[int, float]:
    """How many rows wait to be published, and the age in seconds of the oldest (0 when none)."""
    age = func.extract("epoch", func.now() - func.min(outbox.c.created_at))
    async with db.sessions() as session:
        count, oldest = (await session.execute(select(func.count(), age).where(outbox.c.published_at.is_(None)))).one()
    return int(count), float(oldest or 0)


async def prune_published(db: Database, older_than: timedelta) -> int:
    """Deletes outbox rows published long ago; pending rows are never touched."""
    async with db.unit_of_work() as session:
        result = await session.execute(
            delete(outbox).where(outbox.c.published_at.is_not(None), outbox.c.published_at < utcnow() - older_than)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
