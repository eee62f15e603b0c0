"""A consumer told to stop (SIGTERM's path: Workers.stop) with a message in flight: it finishes the message
within the drain time, or returns it to the queue, where the next consumer handles it; once either way. A batch
consumer commits the batch in flight and returns the messages still waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import insert

from lumiku_common.messaging.broker import Broker
from lumiku_common.messaging.consumer import BatchConsumer, BatchHandlers, Consumer, Delivery, EventHandlers
from lumiku_common.messaging.events import Envelope, ProjectDeleted
from lumiku_devtools.testing import delete_queues, eventually, publish_raw

from .conftest import effects
from .test_consumer import effect_count, envelope

QUEUE = "common.shutdown"


def slow_handlers(first_takes: float) -> tuple[EventHandlers, list[str]]:
    """The first delivery takes `first_takes` seconds before it writes its effect; later ones are quick."""
    handlers, calls = EventHandlers(), []

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, event: ProjectDeleted, env: Envelope) -> None:  # type: ignore[no-untyped-def]
        calls.append(env.id)
        if len(calls) == 1:
            await asyncio.sleep(first_takes)
        await session.execute(insert(effects).values(event_id=env.id))

    return handlers, calls


async def in_flight(
    consumer_on, handlers: EventHandlers, calls: list[str], broker, settings, event_id: str
) -> Consumer:  # type: ignore[no-untyped-def]
    """A consumer whose handler is busy with `event_id` now."""
    consumer = await consumer_on(handlers, broker)
    await publish_raw(settings, "project.deleted", envelope(event_id=event_id))
    await eventually(lambda: asyncio.sleep(0, event_id in calls), what="handler started")
    return consumer


@pytest.fixture
async def consumer_on(db, settings) -> AsyncIterator[Callable[[EventHandlers, Broker], asyncio.Future[Consumer]]]:  # type: ignore[no-untyped-def]
    made: list[Consumer] = []

    async def make(handlers: EventHandlers, broker: Broker) -> Consumer:
        consumer = Consumer(QUEUE, db, broker, handlers, queue_prefix=settings.queue_prefix)
        await consumer.start()
        made.append(consumer)
        return consumer

    yield make  # type: ignore[misc]
    for c in made:
        await c.stop()
    await delete_queues(settings, QUEUE)


async def test_a_message_in_flight_finishes_within_the_drain_and_is_not_redelivered(
    db, broker, settings, consumer_on
) -> None:  # type: ignore[no-untyped-def]
    handlers, calls = slow_handlers(first_takes=1.0)
    first = await in_flight(consumer_on, handlers, calls, broker, settings, "in-flight")

    await first.stop(drain_seconds=10)
    assert await effect_count(db) == 1  # finished before stop() returned

    await consumer_on(handlers, broker)  # had it not been acked, it would come back now
    await publish_raw(settings, "project.deleted", envelope(event_id="sentinel"))
    await eventually(lambda: effect_count_is(db, 2), what="sentinel handled")  # its effect committed
    assert calls == ["in-flight", "sentinel"]


async def test_a_message_in_flight_past_the_drain_goes_back_and_is_handled_once(
    db, broker, settings, consumer_on
) -> None:  # type: ignore[no-untyped-def]
    handlers, calls = slow_handlers(first_takes=30)
    first = await in_flight(consumer_on, handlers, calls, broker, settings, "returned")

    await asyncio.wait_for(first.stop(drain_seconds=0.2), 10)  # does not wait out the 30 s handler
    assert await effect_count(db) == 0  # its transaction never committed

    await consumer_on(handlers, broker)
    await eventually(lambda: effect_count_is(db, 1), what="redelivered and handled")
    assert calls == ["returned", "returned"]
    await publish_raw(settings, "project.deleted", envelope(event_id="sentinel"))
    await eventually(lambda: asyncio.sleep(0, "sentinel" in calls), what="sentinel handled")
    await eventually(lambda: effect_count_is(db, 2), what="both committed")  # the returned one once, the sentinel once
    assert calls.count("sentinel") == 1


async def effect_count_is(db, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await effect_count(db) == n


async def test_a_batch_being_committed_finishes_within_the_drain_and_waiting_messages_go_back(
    db, broker, settings
) -> None:  # type: ignore[no-untyped-def]
    handlers, batches, release = BatchHandlers(batch_size=5, linger_seconds=0.05), [], asyncio.Event()

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, deliveries: list[Delivery]) -> None:  # type: ignore[no-untyped-def]
        batches.append([d.envelope.id for d in deliveries])
        if len(batches) == 1:
            await asyncio.wait_for(release.wait(), 30)
        await session.execute(insert(effects).values([{"event_id": d.envelope.id} for d in deliveries]))

    def consumer() -> BatchConsumer:
        return BatchConsumer(QUEUE, db, broker, handlers, queue_prefix=settings.queue_prefix)

    first = consumer()
    await first.start()
    try:
        for n in range(12):  # the first batch blocks; the rest waits in memory or the queue, unacked
            await publish_raw(settings, "project.deleted", envelope(f"p{n}", f"e{n:02}"))
        await eventually(lambda: asyncio.sleep(0, len(batches) == 1), what="first batch in its transaction")
        asyncio.get_running_loop().call_later(0.5, release.set)
        await first.stop(drain_seconds=10)
        assert len(batches) == 1  # nothing started after the stop
        assert await effect_count(db) == len(batches[0])  # the batch in flight committed
        second = consumer()
        await second.start()
        await eventually(lambda: effect_count_is(db, 12), what="the rest redelivered and handled")
        await asyncio.sleep(0.3)
        assert await effect_count(db) == 12  # each once
        await second.stop()
    finally:
        await first.stop()
        await delete_queues(settings, QUEUE)
