"""Broker.publish_many against real RabbitMQ: a batch goes out in one write with aiormq's confirm bookkeeping
done by hand, so these pin that each message gets its own broker's answer (a nack lands on the message that
was refused, not a neighbour) and that the channel's delivery tags stay aligned for whatever is published
next."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.exceptions import DeliveryError

from lumiku_common import metrics
from lumiku_common.messaging import broker as broker_module
from lumiku_common.messaging.broker import Broker, Outgoing
from lumiku_devtools.testing import EventSpy


@pytest.fixture
async def refusing(refusing_queue) -> AsyncIterator[str]:
    """A routing key the broker nacks (its queue is full and refuses publishes)."""
    key = f"refused.{uuid.uuid4().hex[:8]}"
    async with refusing_queue(key):
        yield key


def message(n: int, routing_key: str = "test.batch") -> Outgoing:
    body = f'{{"type": "test.batch", "n": {n}}}'.encode()
    return Outgoing(body, routing_key, f"m-{n}", {"x-correlation-id": f"c-{n}"})


async def test_a_batch_arrives_whole_in_order_with_its_properties(broker, settings):
    async with EventSpy(settings.amqp_url, settings.events_exchange, "test.batch") as spy:
        results = await broker.publish_many([message(n) for n in range(300)])
        await spy.wait_for("test.batch", 300)
    assert results == [None] * 300
    assert [e["n"] for e in spy.events] == list(range(300))


async def test_properties_and_a_body_larger_than_a_frame(broker, settings):
    big = b'{"n": 1, "pad": "' + b"x" * 300_000 + b'"}'  # frame_max is 128 KiB: the body spans three frames
    received: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "test.big")
        results = await broker.publish_many([Outgoing(big, "test.big", "big-1", {"x-correlation-id": "c"})])
        async with queue.iterator() as messages:
            async for incoming in messages:
                received.append(incoming)
                await incoming.ack()
                break
    assert results == [None]
    [got] = received
    assert got.body == big and got.message_id == "big-1" and got.headers == {"x-correlation-id": "c"}
    assert got.content_type == "application/json" and got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_a_nack_fails_only_the_refused_messages_and_tags_stay_aligned(broker, settings, refusing):
    refused = {2, 5, 9}
    batch = [message(n, refusing if n in refused else "test.batch") for n in range(12)]
    results = await broker.publish_many(batch)
    assert {n for n, r in enumerate(results) if r is not None} == refused
    assert all(isinstance(results[n], DeliveryError) for n in refused)
    # The next publishes (batch and single) are answered for themselves: a tag off by one would move the nack.
    again = await broker.publish_many([message(20), message(21, refusing), message(22)])
    assert [r is None for r in again] == [True, False, True]
    await broker.publish(b"{}", "test.batch", "single-ok", {})
    with pytest.raises(DeliveryError):
        await broker.publish(b"{}", refusing, "single-refused", {})


async def test_an_unroutable_message_is_confirmed_counted_and_logged_once_a_minute_per_type(broker, monkeypatch):
    warned: list[dict[str, Any]] = []
    monkeypatch.setattr(broker_module.log, "warning", lambda event, **fields: warned.append({"event": event, **fields}))
    key = f"nobody.{uuid.uuid4().hex}"
    assert await broker.publish_many([message(n, key) for n in range(3)]) == [None] * 3
    assert await broker.publish_many([message(3, key)]) == [None]
    returned = metrics.EVENTS_UNROUTABLE.labels(key)
    for _ in range(50):  # returns arrive before the confirms, but their callbacks run as tasks
        if returned._value.get() == 4:
            break
        await asyncio.sleep(0.01)
    assert returned._value.get() == 4
    assert [w for w in warned if w.get("routingKey") == key] == [
        {"event": "event_unroutable", "routingKey": key, "messageId": "m-0", "count": 1}
    ]  # the first, then nothing more within the minute


async def test_a_closed_channel_fails_the_batch_at_once(settings):
    broker = Broker(settings.amqp_url, settings.events_exchange)
    await broker.connect()
    assert broker._channel is not None
    await broker._channel.close()
    with pytest.raises(Exception, match="closed"):
        await broker.publish_many([message(1)])
    await broker.close()
