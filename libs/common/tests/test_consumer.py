"""Consumers against real PostgreSQL and RabbitMQ: inbox dedup, bounded retries into the .dlq with the
reason, poison messages, and surviving a dropped broker connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, insert, select

from lumiku_common.db import Database, utcnow
from lumiku_common.messaging import consumer as consumer_module
from lumiku_common.messaging.broker import Broker
from lumiku_common.messaging.consumer import Consumer, EventHandlers
from lumiku_common.messaging.events import Envelope, ProjectDeleted
from lumiku_devtools.testing import TcpProxy, delete_queues, eventually, publish_raw, read_dlq

from .conftest import effects


def envelope(project_id: str = "p1", event_id: str | None = None) -> bytes:
    env = Envelope(type="project.deleted", source="test", time=utcnow(), user_id="u", data={"projectId": project_id})
    if event_id:
        env.id = event_id
    return env.model_dump_json(by_alias=True).encode()


def recording_handlers(fail_times: int = 0) -> tuple[EventHandlers, list[str]]:
    handlers, calls = EventHandlers(), []

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, event: ProjectDeleted, env: Envelope) -> None:
        calls.append(env.id)
        await session.execute(insert(effects).values(event_id=env.id))
        if len(calls) <= fail_times:
            raise RuntimeError("transient failure")

    return handlers, calls


async def effect_count(db: Database) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(effects)) or 0)


@pytest.fixture
async def make_consumer(db, settings) -> AsyncIterator:
    made: list[Consumer] = []

    async def make(handlers: EventHandlers, broker: Broker, **kw) -> Consumer:
        name = f"common.test-{len(made)}"
        consumer = Consumer(name, db, broker, handlers, queue_prefix=settings.queue_prefix, retry_delay=0.01, **kw)
        await consumer.start()
        made.append(consumer)
        return consumer

    yield make
    for c in made:
        await c.stop()
    await delete_queues(settings, *(c.name.removeprefix(settings.queue_prefix) for c in made))


async def test_redelivered_event_has_one_effect(db, broker, settings, make_consumer):
    handlers, calls = recording_handlers()
    consumer = await make_consumer(handlers, broker)
    body = envelope(event_id="same-event-id")
    for _ in range(3):
        await publish_raw(settings, "project.deleted", body)
    await eventually(lambda: effect_count_is(db, 1))
    # Barrier, not a sleep: a later event on the same queue. Once it is handled, the duplicates delivered
    # before it have been through the inbox too, so one that slipped past would show here.
    await publish_raw(settings, "project.deleted", envelope(event_id="sentinel"))
    await eventually(lambda: asyncio.sleep(0, "sentinel" in calls), what="sentinel handled")
    await eventually(lambda: queue_empty(settings, consumer.name))
    assert await effect_count(db) == 2
    assert calls == ["same-event-id", "sentinel"]  # the duplicates were skipped by the inbox before the handler


async def test_transient_failure_is_retried_and_effect_lands_once(db, broker, settings, make_consumer):
    handlers, calls = recording_handlers(fail_times=2)
    await make_consumer(handlers, broker, delivery_limit=5)
    await publish_raw(settings, "project.deleted", envelope())
    await eventually(lambda: effect_count_is(db, 1))
    assert len(calls) == 3  # two rolled-back attempts, one that committed


async def effect_count_is(db: Database, n: int) -> bool:
    return await effect_count(db) == n


async def test_handler_that_always_fails_goes_to_dlq_with_reason(db, broker, settings, make_consumer):
    handlers, calls = recording_handlers(fail_times=10**6)
    consumer = await make_consumer(handlers, broker, delivery_limit=3)
    await publish_raw(settings, "project.deleted", envelope("doomed"))
    dead = await read_dlq(settings.amqp_url, consumer.dlq_name)
    assert json.loads(dead.body)["data"] == {"projectId": "doomed"}
    assert "failed 3 times" in dead.headers["x-dead-letter-reason"]
    assert "transient failure" in dead.headers["x-dead-letter-reason"]
    assert len(calls) == 3 and await effect_count(db) == 0


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b'{"type":"project.deleted"}', envelope().replace(b'"projectId"', b'"wrongField"')],
)
async def test_poison_goes_straight_to_dlq_and_queue_keeps_flowing(db, broker, settings, make_consumer, body):
    handlers, calls = recording_handlers()
    consumer = await make_consumer(handlers, broker, delivery_limit=5)
    await publish_raw(settings, "project.deleted", body)
    dead = await read_dlq(settings.amqp_url, consumer.dlq_name)
    assert dead.body == body and dead.headers["x-dead-letter-reason"].startswith("poison:")
    assert calls == []
    await publish_raw(settings, "project.deleted", envelope("next"))
    await eventually(lambda: effect_count_is(db, 1))


async def test_a_type_with_no_handler_goes_straight_to_dlq_with_the_reason(db, broker, settings, make_consumer):
    """A well-formed event this consumer has no handler for (routed here by a wrong key, or a binding wider than
    its handlers) can never succeed: no retries, dead-lettered at once, and the queue keeps flowing."""
    handlers, calls = recording_handlers()
    consumer = await make_consumer(handlers, broker, delivery_limit=5)
    created = Envelope(
        type="project.created", source="test", time=utcnow(), user_id="u", data={"projectId": "p", "name": "n"}
    )
    body = created.model_dump_json(by_alias=True).encode()
    await publish_raw(settings, "project.deleted", body)
    dead = await read_dlq(settings.amqp_url, consumer.dlq_name)
    assert dead.body == body
    assert dead.headers["x-dead-letter-reason"] == "poison: no handler for project.created"
    assert dead.headers["x-original-queue"] == consumer.name
    assert calls == [] and await effect_count(db) == 0
    await publish_raw(settings, "project.deleted", envelope("next"))
    await eventually(lambda: effect_count_is(db, 1))


async def test_consumer_resumes_after_connection_drop(db, settings, make_consumer):
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    broker = Broker(proxy.url_for(settings.amqp_url), settings.events_exchange, connect_timeout=1)
    handlers, _ = recording_handlers()
    await make_consumer(handlers, broker)
    await publish_raw(settings, "project.deleted", envelope("before"))
    await eventually(lambda: effect_count_is(db, 1))
    proxy.cut()
    await publish_raw(settings, "project.deleted", envelope("during"))  # waits in the durable queue
    await asyncio.sleep(1.0)
    proxy.restore()
    await publish_raw(settings, "project.deleted", envelope("after"))
    await eventually(lambda: effect_count_is(db, 3), timeout=30)
    await broker.close()
    await proxy.stop()


async def test_crash_between_commit_and_ack_is_harmless(db, settings, make_consumer, monkeypatch):
    """The connection dies right after the handler's transaction committed, before the ack: the broker
    redelivers, and the inbox turns the redelivery into a no-op."""
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    broker = Broker(proxy.url_for(settings.amqp_url), settings.events_exchange, connect_timeout=1)
    handlers, calls = recording_handlers()
    original = Consumer._apply
    crashed = asyncio.Event()

    async def apply_then_crash(self, env, event):
        handled = await original(self, env, event)
        if not crashed.is_set():
            crashed.set()
            proxy.cut()
            asyncio.get_running_loop().call_later(0.5, proxy.restore)
        return handled

    claims: list[bool] = []
    original_claim = consumer_module.claim

    async def counting_claim(*args):
        claims.append(await original_claim(*args))
        return claims[-1]

    monkeypatch.setattr(Consumer, "_apply", apply_then_crash)
    monkeypatch.setattr(consumer_module, "claim", counting_claim)
    consumer = await make_consumer(handlers, broker)
    await publish_raw(settings, "project.deleted", envelope("once"))
    await crashed.wait()
    await eventually(lambda: queue_empty(settings, consumer.name), timeout=30)
    assert await effect_count(db) == 1
    assert len(calls) == 1  # the handler itself ran once
    assert claims == [True, False]  # the redelivery happened and stopped at the inbox
    await broker.close()
    await proxy.stop()


async def queue_empty(settings, name: str) -> bool:
    result = await declared(settings, name)
    return result.message_count == 0 and result.consumer_count >= 1


async def queue_depth(settings, name: str) -> int:
    return int((await declared(settings, name)).message_count or 0)


async def declared(settings, name: str):
    import aio_pika

    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result


async def test_prune_inbox_forgets_only_old_ids(db):
    from datetime import timedelta

    from sqlalchemy import update

    from lumiku_common.messaging.consumer import claim, prune_inbox
    from lumiku_common.messaging.tables import inbox

    async with db.unit_of_work() as session:
        for i in range(3):
            env = Envelope(type="project.deleted", source="t", time=utcnow(), data={"projectId": "p"}, id=f"e{i}")
            assert await claim(session, "c", env)
        await session.execute(
            update(inbox).where(inbox.c.event_id == "e0").values(handled_at=utcnow() - timedelta(days=30))
        )
    assert await prune_inbox(db, timedelta(days=14)) == 1
    async with db.sessions() as session:
        assert sorted((await session.execute(select(inbox.c.event_id))).scalars()) == ["e1", "e2"]


async def test_an_outage_longer_than_the_retries_dead_letters_nothing(db, broker, settings, make_consumer):
    """A dependency down for longer than the delivery limit's retries would last: the consumer holds the message
    and retries in place, so the event lands once when the dependency is back, and nothing is dead-lettered."""
    handlers, calls = EventHandlers(), []

    @handlers.on(ProjectDeleted)
    async def on_deleted(session, event: ProjectDeleted, env: Envelope) -> None:
        calls.append(env.id)
        if len(calls) <= 8:
            raise ConnectionResetError(104, "Connection reset by peer")
        await session.execute(insert(effects).values(event_id=env.id))

    consumer = await make_consumer(handlers, broker, delivery_limit=3)
    await publish_raw(settings, "project.deleted", envelope("outlasting"))
    await eventually(lambda: effect_count_is(db, 1), timeout=30)
    assert len(calls) == 9
    await eventually(lambda: queue_empty(settings, consumer.name))
    assert await queue_depth(settings, consumer.dlq_name) == 0
