"""Batch mode against real PostgreSQL and RabbitMQ: one transaction per batch, duplicates skipped in bulk,
a poison message dead-lettered alone while the rest commit exactly once, and deferred messages kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from sqlalchemy import func, insert, select

from lumiku_common.db import Database, utcnow
from lumiku_common.messaging.broker import DLX_NAME, Broker
from lumiku_common.messaging.consumer import BatchConsumer, BatchHandlers, Defer, Delivery, Poison
from lumiku_common.messaging.events import Envelope, ProjectDeleted
from lumiku_devtools.testing import delete_queues, eventually, publish_raw, read_dlq

from .conftest import effects


def envelope(project_id: str, event_id: str) -> bytes:
    env = Envelope(
        id=event_id, type="project.deleted", source="test", time=utcnow(), user_id="u", data={"projectId": project_id}
    )
    return env.model_dump_json(by_alias=True).encode()


async def effect_ids(db: Database) -> list[str]:
    async with db.sessions() as session:
        return list((await session.scalars(select(effects.c.event_id).order_by(effects.c.event_id))).all())


@pytest.fixture
async def make_consumer(db, settings) -> AsyncIterator:
    made: list[BatchConsumer] = []

    async def make(handlers: BatchHandlers, broker: Broker) -> BatchConsumer:
        name = f"common.batch-{len(made)}"
        consumer = BatchConsumer(name, db, broker, handlers, queue_prefix=settings.queue_prefix, retry_delay=0.01)
        await consumer.start()
        made.append(consumer)
        return consumer

    yield make
    for c in made:
        await c.stop()
    await delete_queues(settings, *(c.name.removeprefix(settings.queue_prefix) for c in made))


def recording(batches: list[list[str]], poison: str = "poison") -> BatchHandlers:
    handlers = BatchHandlers(batch_size=50, linger_seconds=0.2)

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, deliveries: list[Delivery]) -> None:
        batches.append([d.envelope.id for d in deliveries])
        await session.execute(insert(effects).values([{"event_id": d.envelope.id} for d in deliveries]))
        if any(d.event.project_id == poison for d in deliveries):
            raise Poison("this project can never be deleted")

    return handlers


async def test_a_batch_commits_once_with_duplicates_skipped(db, broker, settings, make_consumer):
    batches: list[list[str]] = []
    await make_consumer(recording(batches), broker)
    for n in range(30):
        await publish_raw(settings, "project.deleted", envelope(f"p{n}", f"e{n:02}"))
    for n in range(0, 30, 3):  # redeliveries of a third of them, some in the same batch
        await publish_raw(settings, "project.deleted", envelope(f"p{n}", f"e{n:02}"))
    await eventually(lambda: _count_is(db, 30))
    await asyncio.sleep(0.5)
    assert await effect_ids(db) == [f"e{n:02}" for n in range(30)]
    assert len(batches) < 30  # batched: far fewer transactions than messages
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(effects)) == 30


async def test_one_poison_message_in_a_batch_is_dead_lettered_alone(db, broker, settings, make_consumer):
    batches: list[list[str]] = []
    consumer = await make_consumer(recording(batches), broker)
    for n in range(20):
        project = "poison" if n == 7 else f"p{n}"
        await publish_raw(settings, "project.deleted", envelope(project, f"e{n:02}"))
    await publish_raw(settings, "project.deleted", b"{not json")  # malformed, in the same burst
    expected = [f"e{n:02}" for n in range(20) if n != 7]
    await eventually(lambda: _count_is(db, 19))
    reasons = {
        (await read_dlq(settings.amqp_url, consumer.dlq_name)).headers["x-dead-letter-reason"],
        (await read_dlq(settings.amqp_url, consumer.dlq_name)).headers["x-dead-letter-reason"],
    }
    assert any("can never be deleted" in str(r) for r in reasons) and any("poison" in str(r) for r in reasons)
    await asyncio.sleep(0.5)
    assert await effect_ids(db) == expected  # nothing lost, nothing twice, the poison's effect rolled back


async def test_a_deferred_message_is_kept_and_retried_until_decidable(db, broker, settings, make_consumer):
    ready = asyncio.Event()
    handlers = BatchHandlers(batch_size=10)
    seen: list[str] = []

    @handlers.before(ProjectDeleted)
    async def check(deliveries: list[Delivery]) -> dict[str, Exception]:
        seen.extend(d.envelope.id for d in deliveries)
        return {} if ready.is_set() else {d.envelope.id: Defer("owner unknown yet") for d in deliveries}

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, deliveries: list[Delivery]) -> None:
        await session.execute(insert(effects).values([{"event_id": d.envelope.id} for d in deliveries]))

    consumer = await make_consumer(handlers, broker)
    await publish_raw(settings, "project.deleted", envelope("p1", "deferred-1"))
    await eventually(lambda: _at_least(seen, 6), timeout=20)  # retried well past the delivery limit (5)
    assert await effect_ids(db) == []
    ready.set()
    await eventually(lambda: _count_is(db, 1), timeout=20)
    assert consumer.queue is not None


async def _count_is(db: Database, n: int) -> bool:
    return len(await effect_ids(db)) == n


async def _at_least(items: list[str], n: int) -> bool:
    return len(items) >= n


async def test_a_batch_is_acked_at_once_but_never_a_deferred_message_before_it(db, broker, settings, make_consumer):
    """Batches are acked with one `multiple` ack; a deferred message delivered earlier is still unacked after
    later batches commit: stopped then, the broker has it back."""
    handlers = BatchHandlers(batch_size=10, linger_seconds=0.05)
    seen: list[str] = []

    @handlers.before(ProjectDeleted)
    async def check(deliveries: list[Delivery]) -> dict[str, Exception]:
        seen.extend(d.envelope.id for d in deliveries)
        return {d.envelope.id: Defer("owner unknown yet") for d in deliveries if d.envelope.id.startswith("deferred")}

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, deliveries: list[Delivery]) -> None:
        await session.execute(insert(effects).values([{"event_id": d.envelope.id} for d in deliveries]))

    consumer = await make_consumer(handlers, broker)
    await publish_raw(settings, "project.deleted", envelope("p0", "deferred-1"))
    await eventually(lambda: _at_least(seen, 1))
    for n in range(12):  # two batches after it
        await publish_raw(settings, "project.deleted", envelope(f"p{n}", f"ok-{n:02}"))
    await eventually(lambda: _count_is(db, 12))
    await consumer.stop()  # whatever is unacked goes back to the queue

    async def waiting() -> int | None:
        return await ready_messages(settings, consumer.name) or None

    assert await eventually(waiting) == 1  # the deferred one, and only it


async def ready_messages(settings, name: str) -> int:
    import aio_pika

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


async def test_an_outage_outlasting_the_retries_dead_letters_nothing(db, broker, settings, make_consumer):
    """The batch's transaction fails because a dependency is down, for longer than the delivery limit's retries
    would last: every message waits unacked and lands once when the dependency is back; nothing dead-lettered
    (the system test saw usage dead-letter good events after a 5 s database cut)."""
    handlers = BatchHandlers(batch_size=50, linger_seconds=0.2)
    outage_over, attempts = asyncio.Event(), []

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, deliveries: list[Delivery]) -> None:
        attempts.append(len(deliveries))
        if not outage_over.is_set():
            raise ConnectionResetError(104, "Connection reset by peer")
        await session.execute(insert(effects).values([{"event_id": d.envelope.id} for d in deliveries]))

    consumer = await make_consumer(handlers, broker)
    for n in range(5):
        await publish_raw(settings, "project.deleted", envelope(f"p{n}", f"out{n}"))
    await eventually(lambda: _at_least(attempts, 5 * 6), timeout=20)  # each tried past the delivery limit (5)
    outage_over.set()
    await eventually(lambda: _count_is(db, 5), timeout=30)
    assert await effect_ids(db) == [f"out{n}" for n in range(5)]
    assert await ready_messages(settings, consumer.dlq_name) == 0


async def test_a_dead_letter_the_broker_refuses_strands_no_message_of_its_batch(db, broker, settings, make_consumer):
    """The broker refuses the publish that dead-letters a poison message (a nack: here a full queue bound to the
    DLQ's key; in production a confirm timeout or a quorum without a majority) while the consumer's own channel
    is fine. The other messages of that batch must still be handled once: a later batch's `multiple` ack covers
    every older delivery tag, so a message left unsettled by the failed batch would be acked without ever being
    handled (lost), and the poison message must go back to be dead-lettered once the broker takes it."""
    handlers = BatchHandlers(batch_size=50, linger_seconds=0.3)

    @handlers.before(ProjectDeleted)
    async def check(deliveries: list[Delivery]) -> dict[str, Exception]:
        return {d.envelope.id: Poison("forged") for d in deliveries if d.envelope.id == "bad"}

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, deliveries: list[Delivery]) -> None:
        await session.execute(insert(effects).values([{"event_id": d.envelope.id} for d in deliveries]))

    refused: list[BaseException] = []
    publish = broker.publish

    async def spied(*args, **kwargs):  # only watches: the refusal is the real broker's
        try:
            return await publish(*args, **kwargs)
        except Exception as exc:
            refused.append(exc)
            raise

    broker.publish = spied  # type: ignore[method-assign]
    consumer = await make_consumer(handlers, broker)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        dlx = await channel.declare_exchange(DLX_NAME, aio_pika.ExchangeType.DIRECT, durable=True)
        full = await channel.declare_queue(
            f"{consumer.name}.refusing", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        await full.bind(dlx, routing_key=consumer.name)
        try:
            await publish_raw(settings, "project.deleted", envelope("p-bad", "bad"))
            for n in range(10):
                await publish_raw(settings, "project.deleted", envelope(f"p{n}", f"first-{n:02}"))
            await eventually(lambda: _at_least(refused, 1), timeout=20)
        finally:
            await full.delete(if_unused=False, if_empty=False)
    for n in range(10):  # a later batch, acked with one `multiple` ack
        await publish_raw(settings, "project.deleted", envelope(f"q{n}", f"later-{n:02}"))
    expected = sorted([f"first-{n:02}" for n in range(10)] + [f"later-{n:02}" for n in range(10)])
    await eventually(lambda: _ids_are(db, expected), timeout=20)
    dead = await read_dlq(settings.amqp_url, consumer.dlq_name)
    assert "forged" in str(dead.headers["x-dead-letter-reason"])
    await asyncio.sleep(0.5)
    assert await effect_ids(db) == expected  # each once


async def _ids_are(db: Database, expected: list[str]) -> bool:
    return await effect_ids(db) == expected


async def test_a_check_that_fails_for_its_group_checks_each_event_alone(db, broker, settings, make_consumer):
    """A batch's check of one event type fails as a whole because of one event in it (as a NUL in an id failed
    the whole ownership query): each event is then checked alone, so the others go on at once and only that
    event uses up its deliveries, where the whole group was retried to the DLQ with it."""
    handlers = BatchHandlers(batch_size=50, linger_seconds=0.2)
    checked: list[int] = []

    @handlers.before(ProjectDeleted)
    async def check(deliveries: list[Delivery]) -> dict[str, Exception]:
        checked.append(len(deliveries))
        if any(d.event.project_id == "breaks-the-check" for d in deliveries):
            raise ValueError("the check of this group failed")
        return {}

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, deliveries: list[Delivery]) -> None:
        await session.execute(insert(effects).values([{"event_id": d.envelope.id} for d in deliveries]))

    consumer = await make_consumer(handlers, broker)
    for n in range(10):
        project = "breaks-the-check" if n == 4 else f"p{n}"
        await publish_raw(settings, "project.deleted", envelope(project, f"e{n:02}"))
    await eventually(lambda: _count_is(db, 9))
    dead = await read_dlq(settings.amqp_url, consumer.dlq_name)
    assert "the check of this group failed" in str(dead.headers["x-dead-letter-reason"])
    await asyncio.sleep(0.3)
    assert await effect_ids(db) == [f"e{n:02}" for n in range(10) if n != 4]
    assert max(checked) > 1  # they did come as a group
