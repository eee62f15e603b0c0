"""Consumers: one durable quorum queue per purpose, inbox dedup in the handler's transaction, bounded
retries, then the `.dlq` queue with the reason.

A handler runs inside a unit of work together with the inbox row; the message is acked only after that
commit, so a crash at any point either redelivers (and the inbox skips it) or has already committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
from pydantic import ValidationError
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.context import bound, causation_id_var, correlation_id_var, traceparent_var
from lumiku_common.db import Database, utcnow
from lumiku_common.logs import get_logger
from lumiku_common.messaging.broker import DLX_NAME, Broker
from lumiku_common.messaging.events import Envelope, Event, UnknownEvent
from lumiku_common.messaging.tables import inbox

log = get_logger(__name__)

E = TypeVar("E", bound=Event)
Handler = Callable[[AsyncSession, Any, Envelope], Awaitable[None]]
# Long work (a generation job): runs outside any transaction, owns its units of work, and must be idempotent
# itself (the inbox cannot guard work that commits several times). The message stays unacked while it runs, so
# a worker that dies mid-job has it redelivered.
WorkHandler = Callable[[Any, Envelope], Awaitable[None]]


class Poison(Exception):
    """A message that can never succeed (malformed, unknown type): dead-letter at once, no retries."""


class EventHandlers:
    """A service's handlers, registered with `@handlers.on(ProjectDeleted)`."""

    def __init__(self, prefetch: int | None = None) -> None:
        self.by_type: dict[str, Handler] = {}
        self.work_by_type: dict[str, WorkHandler] = {}
        self.prefetch = prefetch  # None: the service's consumer_prefetch; work queues set their concurrency

    @property
    def types(self) -> list[str]:
        return [*self.by_type, *self.work_by_type]

    def on(self, event: type[E]) -> Callable[[Callable[[AsyncSession, E, Envelope], Awaitable[None]]], Handler]:
        def register(fn: Callable[[AsyncSession, E, Envelope], Awaitable[None]]) -> Handler:
            self.by_type[event.type] = fn
            return fn

        return register

    def work(self, event: type[E]) -> Callable[[Callable[[E, Envelope], Awaitable[None]]], WorkHandler]:
        def register(fn: Callable[[E, Envelope], Awaitable[None]]) -> WorkHandler:
            self.work_by_type[event.type] = fn
            return fn

        return register


async def claim(session: AsyncSession, consumer: str, envelope: Envelope) -> bool:
    """Records the event as handled by `consumer`; False if it already was (a redelivery)."""
    result = await session.execute(
        insert(inbox)
        .values(consumer=consumer, event_id=envelope.id, event_type=envelope.type)
        .on_conflict_do_nothing()
        .returning(inbox.c.event_id)
    )
    return result.first() is not None


class Consumer:
    def __init__(
        self,
        name: str,
        db: Database,
        broker: Broker,
        handlers: EventHandlers,
        *,
        queue_prefix: str = "",
        prefetch: int = 16,
        delivery_limit: int = 5,
        retry_delay: float = 0.2,
    ):
        self.name = f"{queue_prefix}{name}"
        self.db, self.broker, self.handlers = db, broker, handlers
        self.prefetch = handlers.prefetch or prefetch
        self.delivery_limit, self.retry_delay = delivery_limit, retry_delay
        self.queue: AbstractQueue | None = None
        self._channel: AbstractRobustChannel | None = None

    @property
    def dlq_name(self) -> str:
        return f"{self.name}.dlq"

    async def start(self) -> None:
        channel = await self.broker.channel(self.prefetch)
        dlx = await channel.declare_exchange(DLX_NAME, aio_pika.ExchangeType.DIRECT, durable=True)
        dlq = await channel.declare_queue(self.dlq_name, durable=True, arguments={"x-queue-type": "quorum"})
        await dlq.bind(dlx, routing_key=self.name)
        exchange = await channel.declare_exchange(self.broker.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        # The broker's delivery limit is the backstop for consumers that crash mid-message; the handler
        # path below dead-letters with the reason before that limit is reached.
        queue = await channel.declare_queue(
            self.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self.delivery_limit + 1,
                "x-dead-letter-exchange": DLX_NAME,
                "x-dead-letter-routing-key": self.name,
            },
        )
        for event_type in self.handlers.types:
            await queue.bind(exchange, routing_key=event_type)
        await queue.consume(self._on_message)
        self.queue, self._channel = queue, channel
        log.info("consumer_started", queue=self.name, events=sorted(self.handlers.types))

    async def stop(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        with bound(
            (correlation_id_var, _str(headers.get("x-correlation-id"))),
            (causation_id_var, message.message_id),
            (traceparent_var, _str(headers.get("traceparent"))),
        ):
            await self._handle(message)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope, event = self._decode(message)
            handled = await self._apply(envelope, event)
        except Poison as exc:
            await self._dead_letter(message, f"poison: {exc}")
            return
        except Exception as exc:
            attempt = _delivery_count(message) + 1
            if attempt >= self.delivery_limit:
                await self._dead_letter(message, f"failed {attempt} times: {exc!r}")
                return
            log.warning("event_handler_failed", queue=self.name, attempt=attempt, error=repr(exc))
            await asyncio.sleep(self.retry_delay * attempt)
            await message.nack(requeue=True)
            return
        await message.ack()
        log.info(
            "event_handled" if handled else "event_duplicate_skipped",
            queue=self.name,
            eventType=envelope.type,
            eventId=envelope.id,
        )

    def _decode(self, message: AbstractIncomingMessage) -> tuple[Envelope, Event]:
        try:
            envelope = Envelope.model_validate_json(message.body)
            return envelope, envelope.parse()
        except (ValidationError, UnknownEvent, ValueError) as exc:
            raise Poison(str(exc)[:500]) from exc

    async def _apply(self, envelope: Envelope, event: Event) -> bool:
        work = self.handlers.work_by_type.get(envelope.type)
        if work is not None:
            await work(event, envelope)
            return True
        handler = self.handlers.by_type.get(envelope.type)
        if handler is None:
            raise Poison(f"no handler for {envelope.type}")
        async with self.db.unit_of_work() as session:
            if not await claim(session, self.name, envelope):
                return False
            await handler(session, event, envelope)
        return True

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.error("event_dead_lettered", queue=self.name, messageId=message.message_id, reason=reason)
        headers = {
            **(message.headers or {}),
            "x-dead-letter-reason": reason[:1000],
            "x-original-queue": self.name,
        }
        await self.broker.publish(message.body, self.name, message.message_id or "", headers, exchange=DLX_NAME)
        await message.ack()


async def prune_inbox(db: Database, older_than: timedelta) -> int:
    """Forgets handled event ids older than any redelivery could be (the dedup window)."""
    async with db.unit_of_work() as session:
        result = await session.execute(delete(inbox).where(inbox.c.handled_at < utcnow() - older_than))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered this message before (quorum queues count it for us)."""
    value = (message.headers or {}).get("x-delivery-count")
    return value if isinstance(value, int) else 0


def _str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return None if value is None else str(value)
