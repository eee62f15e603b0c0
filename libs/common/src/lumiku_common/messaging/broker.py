"""The RabbitMQ connection of a service: one robust connection, a confirming channel, the topic exchange."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import aio_pika
import aiormq
import pamqp.frame
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from lumiku_common import metrics
from lumiku_common.logs import get_logger

log = get_logger(__name__)

DLX_NAME = "lumiku.dlx"


@dataclass(frozen=True)
class Outgoing:
    """A message for the events exchange: persistent JSON, routed by `routing_key`. `must_route`: returned by the
    broker as unroutable (no queue bound to its key), it counts as not published (`Unroutable`)."""

    body: bytes
    routing_key: str
    message_id: str
    headers: dict[str, Any]
    must_route: bool = False


class Unroutable(Exception):
    """The broker confirmed the message but no queue took it."""


UNROUTABLE_LOG_SECONDS = 60.0


class Broker:
    def __init__(self, url: str, exchange_name: str, connect_timeout: float = 5.0):
        self.url, self.exchange_name, self.connect_timeout = url, exchange_name, connect_timeout
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()
        self._unroutable: dict[str, int] = {}  # returned since last logged, by routing key
        self._unroutable_logged: dict[str, float] = {}

    @property
    def is_connected(self) -> bool:
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def connect(self) -> None:
        """Connects once; afterwards aio-pika reconnects and re-declares on its own."""
        async with self._lock:
            if self.connection is not None:
                return
            connection = await aio_pika.connect_robust(self.url, timeout=self.connect_timeout)
            channel = await connection.channel(publisher_confirms=True)
            channel.return_callbacks.add(self._on_return)
            self._exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self.connection, self._channel = connection, channel

    async def channel(self, prefetch: int) -> AbstractRobustChannel:
        """A separate channel for a consumer, so its prefetch and acks never block publishing."""
        await self.connect()
        assert self.connection is not None
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel  # type: ignore[return-value]

    async def publish(
        self,
        body: bytes,
        routing_key: str,
        message_id: str,
        headers: dict[str, Any],
        timeout: float = 10.0,
        exchange: str | None = None,
    ) -> None:
        """Returns once the broker confirmed the message; raises otherwise."""
        await self.connect()
        assert self._channel is not None and self._exchange is not None
        target = self._exchange if exchange is None else await self._channel.get_exchange(exchange)
        message = aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers,
        )
        await target.publish(message, routing_key, mandatory=True, timeout=timeout)

    async def publish_many(self, messages: Sequence[Outgoing], timeout: float = 10.0) -> list[BaseException | None]:
        """Sends every message, then awaits all their confirms together: per message, None once the broker
        confirmed it, else why not (a nack, no confirm within `timeout`, the connection lost). An unroutable
        message is confirmed (and logged), as with `publish`."""
        if not messages:
            return []
        await self.connect()
        assert self._channel is not None
        if self._channel.is_closed:  # the robust channel would wait for the reconnection: fail now instead
            raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed (reconnecting)")
        channel = cast(aiormq.Channel, await asyncio.wait_for(self._channel.get_underlay_channel(), timeout))
        confirms = await _send(channel, self.exchange_name, messages)
        await asyncio.wait(confirms, timeout=timeout)
        return [_outcome(confirm, timeout, m) for confirm, m in zip(confirms, messages, strict=True)]

    def _on_return(self, _: Any, message: Any) -> None:
        # An event nobody subscribes to yet is not an error, but it should be visible: counted, and logged once
        # per type and minute with how many came back (a line per event was a tenth of a write's CPU).
        key = message.routing_key
        metrics.EVENTS_UNROUTABLE.labels(key).inc()
        self._unroutable[key] = self._unroutable.get(key, 0) + 1
        now = time.monotonic()
        if now - self._unroutable_logged.get(key, -UNROUTABLE_LOG_SECONDS) >= UNROUTABLE_LOG_SECONDS:
            log.warning("event_unroutable", routingKey=key, messageId=message.message_id, count=self._unroutable[key])
            self._unroutable_logged[key], self._unroutable[key] = now, 0

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.connection = self._channel = self._exchange = None


async def _send(channel: aiormq.Channel, exchange: str, messages: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
    """The frames of all the messages in one write. aiormq's `basic_publish` costs a task, a round of the
    channel's lock, a write-queue hop and a socket write per message, waiting for each write to drain before
    the next: 3.5x the CPU of this per message (measured, 5000 confirmed publishes). This keeps its
    bookkeeping (a delivery tag and a confirmation future per message, tags taken under the channel's lock in
    the order the frames go out, so they match the broker's count), once per batch. It relies on aiormq's
    channel attributes (the version is pinned in uv.lock; tests/test_broker.py fails if they change)."""
    size = channel.max_content_size
    payload = io.BytesIO()
    for message in messages:  # marshalled before any tag is taken: a failure here has sent nothing
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,  # persistent
            message_id=message.message_id,
            headers=message.headers,
        )
        frames: list[Any] = [
            aiormq.spec.Basic.Publish(exchange=exchange, routing_key=message.routing_key, mandatory=True),
            ContentHeader(properties=properties, body_size=len(message.body)),
            *(ContentBody(message.body[at : at + size]) for at in range(0, len(message.body), size)),
        ]
        for frame in frames:
            payload.write(pamqp.frame.marshal(frame, channel.number))
    confirms: list[asyncio.Future[Any]] = []
    async with channel.lock:  # raises if the channel is closed
        first = channel.delivery_tag + 1
        for tag, message in enumerate(messages, first):
            confirm = channel.create_future()  # rejected by aiormq if the channel closes before the confirm
            channel.confirmations[tag] = confirm
            channel.message_id_delivery_tag[message.message_id] = tag  # how a Basic.Return finds its confirm
            confirm.add_done_callback(partial(_forget, channel, message.message_id, tag))
            confirms.append(confirm)
        channel.delivery_tag = first + len(messages) - 1
        try:
            await channel.write_queue.put(ChannelFrame(payload=payload.getvalue(), should_close=False))
        except BaseException:  # not sent: the broker never counted these tags, the next publish reuses them
            channel.delivery_tag = first - 1
            for tag, confirm in enumerate(confirms, first):
                channel.confirmations.pop(tag, None)
                confirm.cancel()
            raise
    return confirms


def _forget(channel: aiormq.Channel, message_id: str, tag: int, _: asyncio.Future[Any]) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


def _outcome(confirm: asyncio.Future[Any], timeout: float, message: Outgoing) -> BaseException | None:
    if not confirm.done():
        confirm.cancel()  # a late confirm is then ignored by aiormq; the message counts as not published
        return TimeoutError(f"no publisher confirm within {timeout} s")
    if confirm.cancelled():
        return asyncio.CancelledError()
    if (error := confirm.exception()) is not None:
        return error
    # aiormq resolves a returned message's confirm with the message itself (a Basic.Return precedes its ack).
    if message.must_route and isinstance(confirm.result(), DeliveredMessage):
        return Unroutable(f"{message.routing_key} {message.message_id} is unroutable: no queue takes it yet")
    return None
