"""The RabbitMQ connection of a service: one robust connection, a confirming channel, the topic exchange."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

from lumiku_common.logs import get_logger

log = get_logger(__name__)

DLX_NAME = "lumiku.dlx"


class Broker:
    def __init__(self, url: str, exchange_name: str, connect_timeout: float = 5.0):
        self.url, self.exchange_name, self.connect_timeout = url, exchange_name, connect_timeout
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

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

    @staticmethod
    def _on_return(_: Any, message: Any) -> None:
        # An event nobody subscribes to yet is not an error, but it should be visible.
        log.warning("event_unroutable", routingKey=message.routing_key, messageId=message.message_id)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.connection = self._channel = self._exchange = None
