"""The outbox relay against real PostgreSQL and RabbitMQ: nothing lost while the broker is unreachable,
nothing published twice by concurrent relays."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import suppress

import aio_pika
import pytest
from aio_pika.exceptions import DeliveryError
from sqlalchemy import func, select, text

from lumiku_common.db import Database
from lumiku_common.ids import new_id
from lumiku_common.messaging.broker import Broker
from lumiku_common.messaging.events import CaptureCredits, ProjectCreated, ProjectDeleted
from lumiku_common.messaging.outbox import OutboxRelay, add_event
from lumiku_common.messaging.tables import outbox
from lumiku_devtools.testing import EventSpy, TcpProxy, eventually


async def stage(db: Database, count: int, prefix: str = "p", on_driver: bool = False) -> list[str]:
    """`count` events, each committed in its own unit of work: a session's, or one on the driver connection."""
    ids = []
    for i in range(count):
        async with db.driver_work() if on_driver else db.unit_of_work() as work:
            envelope = await add_event(work, ProjectCreated(project_id=f"{prefix}{i}", name="n"), user_id="u")
            ids.append(envelope.id)
    return ids


# Both units of work stage events the same way.
ON_DRIVER = pytest.mark.parametrize("on_driver", [False, True], ids=["session", "driver"])


async def pending(db: Database) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).where(outbox.c.published_at.is_(None))) or 0)


async def drained(db: Database) -> bool:
    return await pending(db) == 0


async def attempted(db: Database, at_least: int = 1) -> bool:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.max(outbox.c.attempts))) or 0) >= at_least


async def sentinel_published(db: Database, spy: EventSpy, *relays: OutboxRelay) -> str:
    """A barrier instead of a sleep: an event staged after everything else and seen by the spy. The relay
    publishes in outbox order and the spy's queue is FIFO, so any duplicate of an earlier event that the relay
    was going to send has arrived by then. `relays` are run until drained (when none is running already)."""
    [marker] = await stage(db, 1, "sentinel")
    if relays:
        await run_until_drained(db, *relays)
    await eventually(lambda: asyncio.sleep(0, any(e["id"] == marker for e in spy.events)), what="sentinel seen")
    return marker


async def run_until_drained(db: Database, *relays: OutboxRelay, timeout: float = 30) -> None:
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        await eventually(lambda: drained(db), timeout, what="outbox drained")
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with suppress(asyncio.CancelledError):
                await t


@ON_DRIVER
async def test_rolled_back_changes_publish_nothing(db, broker, settings, on_driver):
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        with suppress(RuntimeError):
            async with db.driver_work() if on_driver else db.unit_of_work() as work:
                await add_event(work, ProjectCreated(project_id="x", name="n"), user_id="u")
                raise RuntimeError("the change failed")
        assert await pending(db) == 0 and not db.outbox_signal.is_set()
        marker = await stage(db, 1, on_driver=on_driver)
        assert db.outbox_signal.is_set()  # the commit wakes this process's relay at once
        await run_until_drained(db, OutboxRelay(db, broker, poll_seconds=0.05))
        await spy.wait_for("project.created")
    assert [e["id"] for e in spy.events] == marker


async def test_events_staged_while_broker_unreachable_are_all_published_once(db, settings):
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    broker = Broker(proxy.url_for(settings.amqp_url), settings.events_exchange, connect_timeout=1)
    relay = OutboxRelay(db, broker, batch_size=20, poll_seconds=0.05, max_backoff=0.3)
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        proxy.cut()
        task = asyncio.create_task(relay.run())
        ids = await stage(db, 50)
        await eventually(lambda: attempted(db, 2), what="the relay failed and retried")
        assert await pending(db) == 50
        proxy.restore()
        await spy.wait_for("project.created", 50, timeout=30)
        ids.append(await sentinel_published(db, spy))
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    counts = Counter(e["id"] for e in spy.events)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    assert await pending(db) == 0
    await broker.close()
    await proxy.stop()


async def test_broker_dropping_mid_stream_loses_nothing(db, settings):
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    broker = Broker(proxy.url_for(settings.amqp_url), settings.events_exchange, connect_timeout=1)
    relay = OutboxRelay(db, broker, batch_size=10, poll_seconds=0.05, max_backoff=0.3)
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        task = asyncio.create_task(relay.run())
        first = await stage(db, 30, "a")
        await spy.wait_for("project.created", 1)
        proxy.cut()  # an outage while the relay is working
        second = await stage(db, 30, "b")
        await eventually(lambda: attempted(db), what="the relay tried during the outage")
        proxy.restore()
        await spy.wait_for("project.created", 60, timeout=40)
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    assert {e["id"] for e in spy.events} == set(first + second)
    await broker.close()
    await proxy.stop()


async def test_a_nacked_row_of_a_batch_stays_pending_while_the_rest_are_marked(db, broker, settings, refusing_queue):
    """The relay sends a batch at once and awaits the confirms together: only confirmed rows are marked."""
    ids = await stage(db, 3, "a")
    async with db.unit_of_work() as session:
        refused = (await add_event(session, ProjectDeleted(project_id="d"), user_id="u")).id
    ids += await stage(db, 3, "b")
    relay = OutboxRelay(db, broker, batch_size=50)
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        async with refusing_queue("project.deleted"):
            with pytest.raises(DeliveryError):
                await relay.publish_pending()
            async with db.sessions() as session:
                rows = {
                    r.event_id: r
                    for r in await session.execute(select(outbox.c.event_id, outbox.c.published_at, outbox.c.attempts))
                }
            assert rows[refused].published_at is None and rows[refused].attempts == 1
            assert all(rows[i].published_at is not None and rows[i].attempts == 0 for i in ids)
        assert await relay.publish_pending() == 1  # the queue refusing it is gone: sent again, confirmed
        await spy.wait_for("project.created", 6)
        await spy.wait_for("project.deleted")
    assert await pending(db) == 0
    counts = Counter(e["id"] for e in spy.of_type("project.created"))
    assert set(counts) == set(ids) and max(counts.values()) == 1


async def test_a_command_no_queue_receives_stays_pending_until_its_consumers_queue_exists(db, settings):
    """A command is work someone must do: `credits.capture` is the charge of an avatar that exists. Published before
    its consumer ever declared its queue (a fresh deployment whose credits worker is not up yet, a queue an operator
    deleted and the worker has not declared again), the broker returns it as unroutable. Confirmed and marked
    published like an event nobody reads, it was gone for good and the avatar never paid. It stays pending and is
    sent once the queue exists; events nobody reads are still confirmed and marked (their rows around it)."""
    before = await stage(db, 2, "before")
    async with db.unit_of_work() as session:
        command = CaptureCredits(hold_id="h-1", idempotency_key="capture:h-1")
        capture = (await add_event(session, command, user_id="u", subject="h-1")).id
    after = await stage(db, 2, "after")
    # An exchange of its own: on the shared one, other tests' credits consumers bind `credits.capture`.
    exchange = f"{settings.events_exchange}.{new_id()}"
    broker = Broker(settings.amqp_url, exchange)
    await broker.connect()
    try:
        relay = OutboxRelay(db, broker, batch_size=50)
        with pytest.raises(Exception, match="unroutable"):
            await relay.publish_pending()
        async with db.sessions() as session:
            rows = {r.event_id: r for r in await session.execute(select(outbox.c.event_id, outbox.c.published_at))}
        assert rows[capture].published_at is None  # still to be sent
        assert all(rows[i].published_at is not None for i in before + after)
        async with EventSpy(settings.amqp_url, exchange, "credits.capture") as spy:  # its queue now
            assert await relay.publish_pending() == 1
            [received] = await spy.wait_for("credits.capture")
        assert received["id"] == capture and received["data"]["holdId"] == "h-1"
        assert await pending(db) == 0
    finally:
        await broker.close()
        async with await aio_pika.connect(settings.amqp_url) as connection:
            await (await connection.channel()).exchange_delete(exchange)


async def test_two_relays_publish_each_event_exactly_once(db, settings):
    ids = await stage(db, 300)
    brokers = [Broker(settings.amqp_url, settings.events_exchange) for _ in range(2)]
    dbs = [Database(settings.database_url, "common") for _ in range(2)]
    relays = [OutboxRelay(d, b, batch_size=25, poll_seconds=0.02) for d, b in zip(dbs, brokers, strict=True)]
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        await run_until_drained(db, *relays)
        await spy.wait_for("project.created", 300)
        ids.append(await sentinel_published(db, spy, *relays))
    counts = Counter(e["id"] for e in spy.events)
    assert set(counts) == set(ids) and max(counts.values()) == 1
    for b, d in zip(brokers, dbs, strict=True):
        await b.close()
        await d.dispose()


@ON_DRIVER
async def test_envelope_carries_context(db, broker, settings, on_driver):
    from lumiku_common.context import correlation_id_var

    token = correlation_id_var.set("corr-123")
    try:
        await stage(db, 1, on_driver=on_driver)
    finally:
        correlation_id_var.reset(token)
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        await run_until_drained(db, OutboxRelay(db, broker, poll_seconds=0.05))
        [event] = await spy.wait_for("project.created")
    assert event["correlationId"] == "corr-123"
    assert event["source"] == "common" and event["version"] == 1
    assert event["data"] == {"projectId": "p0", "name": "n", "description": None}


@ON_DRIVER
async def test_commit_in_another_process_wakes_the_relay(db, broker, settings, on_driver):
    """Polling is set to 60 s: only the NOTIFY sent at commit can explain a prompt publish."""
    relay = OutboxRelay(db, broker, poll_seconds=60)
    sleeping = asyncio.Event()
    wait_for_work = relay._wait_for_work

    async def sleeps() -> None:  # the moment the first, empty poll is over
        sleeping.set()
        await wait_for_work()

    relay._wait_for_work = sleeps  # type: ignore[method-assign]
    # Another process's pool (its in-process signal is not shared), one that runs no relay of its own.
    writer = Database(settings.database_url, "common", notify_outbox=True)
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        task = asyncio.create_task(relay.run())
        await asyncio.wait_for(sleeping.wait(), 10)
        await eventually(lambda: listening(db), what="the relay's listener subscribed")
        ids = await stage(writer, 1, on_driver=on_driver)
        try:
            await spy.wait_for("project.created", timeout=10)
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    assert [e["id"] for e in spy.events] == ids
    await writer.dispose()


async def test_while_writes_stream_in_the_relay_lets_them_join_one_batch(db, broker, settings):
    """After a cycle that published, the relay lingers before the next: two commits made in that time go out in
    one cycle (one transaction, one broker round trip) instead of one each."""
    relay = OutboxRelay(db, broker, poll_seconds=60, linger=1.0)
    batches: list[int] = []
    publish_pending = relay.publish_pending

    async def counted() -> int:
        published = await publish_pending()
        if published:
            batches.append(published)
        return published

    async def cycles_done() -> bool:
        # The spy has a batch before its cycle returns: the rows are marked and committed after the confirms.
        return len(spy.events) == 3 and sum(batches) == 3

    relay.publish_pending = counted  # type: ignore[method-assign]
    async with EventSpy(settings.amqp_url, settings.events_exchange) as spy:
        task = asyncio.create_task(relay.run())
        try:
            first = await stage(db, 1, "first")
            await spy.wait_for("project.created")
            rest = await stage(db, 2, "rest")  # well inside the linger
            await eventually(cycles_done, what="all three published and their cycles done")
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    assert [e["id"] for e in spy.events] == first + rest
    assert batches == [1, 2]


async def listening(db: Database) -> bool:
    """True once a connection of this database LISTENs (asyncpg's add_listener runs `LISTEN "channel"`)."""
    async with db.sessions() as session:
        found = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN %'"
            )
        )
    return bool(found)


async def test_prune_keeps_pending_and_recent_rows(db, broker):
    from datetime import timedelta

    from sqlalchemy import update

    from lumiku_common.messaging.outbox import prune_published

    await stage(db, 3)
    await OutboxRelay(db, broker).publish_pending()
    await stage(db, 2, "pending")
    async with db.unit_of_work() as session:  # age two of the published rows
        old = select(outbox.c.id).where(outbox.c.published_at.is_not(None)).order_by(outbox.c.id).limit(2)
        await session.execute(
            update(outbox).where(outbox.c.id.in_(old)).values(published_at=func.now() - timedelta(days=2))
        )
    assert await prune_published(db, timedelta(hours=24)) == 2
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(outbox)) == 3
    assert await pending(db) == 2
