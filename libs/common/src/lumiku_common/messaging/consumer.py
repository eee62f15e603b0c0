"""Consumers: one durable quorum queue per purpose, inbox dedup in the handler's transaction, bounded
retries, then the `.dlq` queue with the reason.

A handler runs inside a unit of work together with the inbox row; the message is acked only after that
commit, so a crash at any point either redelivers (and the inbox skips it) or has already committed.

Two modes, same queue, same guarantees:
- `EventHandlers`: one message, one transaction (`Consumer`).
- `BatchHandlers`: up to N messages, one transaction (`BatchConsumer`), for high-volume streams. The inbox
  ids of a batch are inserted in one statement (duplicates skipped), the handlers get lists, every message
  is acked after the commit. A batch that fails is split: each message then runs alone, so a poison message
  is dead-lettered by itself and the others commit once each (the failed batch committed nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
from pydantic import ValidationError
from sqlalchemy import delete, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common import metrics, tracing
from lumiku_common.context import bound, causation_id_var, correlation_id_var, traceparent_var
from lumiku_common.db import Database, utcnow
from lumiku_common.errors import is_outage
from lumiku_common.logs import get_logger
from lumiku_common.messaging.broker import DLX_NAME, Broker
from lumiku_common.messaging.events import Envelope, Event, UnknownEvent
from lumiku_common.messaging.tables import inbox

log = get_logger(__name__)

OUTAGE_MAX_BACKOFF_SECONDS = 5.0

E = TypeVar("E", bound=Event)
Handler = Callable[[AsyncSession, Any, Envelope], Awaitable[None]]
# Long work (a generation job): runs outside any transaction, owns its units of work, and must be idempotent
# itself (the inbox cannot guard work that commits several times). The message stays unacked while it runs, so
# a worker that dies mid-job has it redelivered.
WorkHandler = Callable[[Any, Envelope], Awaitable[None]]


class Poison(Exception):
    """A message that can never succeed (malformed, unknown type): dead-letter at once, no retries."""


class Defer(Exception):
    """A message that cannot be decided yet because something it needs is unavailable (another service is
    down): kept unacked and retried with backoff, without using up its deliveries (batch mode; an outage —
    `is_outage` — is treated the same)."""


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


# Fixed text for any batch size, the ids as arrays; sorted, so concurrent batches take row locks in one order.
_CLAIM_MANY = text(
    """
    INSERT INTO inbox (consumer, event_id, event_type)
    SELECT CAST(:consumer AS varchar), event_id, event_type
    FROM unnest(CAST(:event_ids AS varchar[]), CAST(:event_types AS varchar[])) AS claimed(event_id, event_type)
    ORDER BY event_id
    ON CONFLICT DO NOTHING
    RETURNING event_id
    """
)


async def claim_many(session: AsyncSession, consumer: str, envelopes: list[Envelope]) -> set[str]:
    """Records a batch of events as handled by `consumer` in one statement; returns the ids that were new."""
    if not envelopes:
        return set()
    result = await session.execute(
        _CLAIM_MANY,
        {"consumer": consumer, "event_ids": [e.id for e in envelopes], "event_types": [e.type for e in envelopes]},
    )
    return set(result.scalars())


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
        self.service = name.split(".", 1)[0]  # purposes are "<service>.<purpose>"
        self.db, self.broker, self.handlers = db, broker, handlers
        self.prefetch = handlers.prefetch or prefetch
        self.delivery_limit, self.retry_delay = delivery_limit, retry_delay
        self.queue: AbstractQueue | None = None
        self._channel: AbstractRobustChannel | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()  # deliveries being handled right now

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
        self._consumer_tag = await queue.consume(self._on_message)
        self.queue, self._channel = queue, channel
        log.info("consumer_started", queue=self.name, events=sorted(self.handlers.types))

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Graceful: no new deliveries, the in-flight ones get `drain_seconds` to finish (and be acked), then
        the channel closes and the broker requeues whatever is still unacked; the inbox (or a work handler's
        own idempotency) makes the redelivery count once."""
        await self._stop_consuming()
        await self._drain(drain_seconds)
        await self._close()

    async def _stop_consuming(self) -> None:
        if self.queue is not None and self._consumer_tag is not None:
            with suppress(Exception):  # a broken connection has stopped delivering anyway
                await asyncio.wait_for(self.queue.cancel(self._consumer_tag), 5)
            self._consumer_tag = None

    async def _drain(self, seconds: float) -> None:
        if self._in_flight and seconds > 0:
            log.info("consumer_draining", queue=self.name, inFlight=len(self._in_flight), seconds=seconds)
            await asyncio.wait(set(self._in_flight), timeout=seconds)
        for task in list(self._in_flight):  # returned to the queue when the channel closes
            log.warning("consumer_returned_in_flight", queue=self.name)
            task.cancel()

    async def _close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def depths(self) -> tuple[int, int]:
        """Messages ready in the queue and in its DLQ, by passive declares (no management API needed) on a
        short-lived channel of their own: a failed passive declare closes its channel."""
        await self.broker.connect()
        assert self.broker.connection is not None
        channel = await self.broker.connection.channel()
        try:
            counts = []
            for name in (self.name, self.dlq_name):
                queue = await channel.declare_queue(name, passive=True, robust=False)
                counts.append(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()
        return counts[0], counts[1]

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            with (
                tracing.consuming(self.name, headers, self.service) as traceparent,
                bound(
                    (correlation_id_var, _str(headers.get("x-correlation-id"))),
                    (causation_id_var, message.message_id),
                    (traceparent_var, traceparent or _str(headers.get("traceparent"))),
                ),
            ):
                await self._handle(message)
        finally:
            self._in_flight.discard(task)  # type: ignore[arg-type]

    def _failed(self, message: AbstractIncomingMessage) -> tuple[int, bool]:
        attempt = _delivery_count(message) + 1
        return attempt, attempt >= self.delivery_limit

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope, event = self._decode(message)
            with metrics.timed(metrics.HANDLER_DURATION, self.name):
                handled = await self._apply_through_outages(envelope, event)
        except Poison as exc:
            await self._dead_letter(message, f"poison: {exc}")
            return
        except Exception as exc:
            await self._retry_or_dead_letter(message, exc)
            return
        await message.ack()
        metrics.consumed(self.name, "handled" if handled else "duplicate")
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

    async def _apply_through_outages(self, envelope: Envelope, event: Event) -> bool:
        """Retries in place, holding the message, while a dependency is down: redeliveries would use up the
        message's delivery limit within seconds and dead-letter an event that is fine. A shutdown meanwhile
        returns the message to its queue (unacked)."""
        delay = self.retry_delay
        while True:
            try:
                return await self._apply(envelope, event)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                log.warning(
                    "event_dependency_down", queue=self.name, eventId=envelope.id, retryIn=delay, error=repr(exc)
                )
                metrics.consumed(self.name, "retried")
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTAGE_MAX_BACKOFF_SECONDS)

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

    async def _retry_or_dead_letter(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        attempt, exhausted = self._failed(message)
        if exhausted:
            await self._dead_letter(message, f"failed {attempt} times: {exc!r}")
            return
        log.warning("event_handler_failed", queue=self.name, attempt=attempt, error=repr(exc))
        metrics.consumed(self.name, "retried")
        await asyncio.sleep(self.retry_delay * attempt)
        await message.nack(requeue=True)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.error("event_dead_lettered", queue=self.name, messageId=message.message_id, reason=reason)
        headers = {
            **(message.headers or {}),
            "x-dead-letter-reason": reason[:1000],
            "x-original-queue": self.name,
        }
        try:
            await self.broker.publish(message.body, self.name, message.message_id or "", headers, exchange=DLX_NAME)
        except Exception as exc:
            # Never leave it unsettled: a batch consumer's next `multiple` ack would ack it unhandled, and a
            # single consumer would hold it until its channel closes. Back to the queue, to be decided again (the
            # queue's delivery limit dead-letters it broker-side if the DLQ keeps refusing).
            log.warning("event_dead_letter_failed", queue=self.name, messageId=message.message_id, error=repr(exc))
            await asyncio.sleep(self.retry_delay)
            await message.nack(requeue=True)
            return
        await message.ack()
        metrics.consumed(self.name, "dead_lettered")


# --- batch mode -------------------------------------------------------------------------------------------


@dataclass
class Delivery:
    """One message of a batch, decoded."""

    envelope: Envelope
    event: Any
    message: AbstractIncomingMessage = field(repr=False)

    @contextmanager
    def context(self) -> Iterator[None]:
        """The message's correlation/trace context, for events staged on its behalf."""
        headers = self.message.headers or {}
        with bound(
            (correlation_id_var, _str(headers.get("x-correlation-id"))),
            (causation_id_var, self.message.message_id or self.envelope.id),
            (traceparent_var, _str(headers.get("traceparent"))),
        ):
            yield


BatchHandler = Callable[[AsyncSession, list[Delivery]], Awaitable[None]]
# Runs before the batch's transaction (it may call out); returns the deliveries to leave out of it, each
# with its fate: Poison (dead-letter), Defer (retry later) or another exception (retry, then dead-letter).
Preparer = Callable[[list[Delivery]], Awaitable[dict[str, Exception]]]


class BatchHandlers:
    """A service's batch handlers: `@handlers.on(UsageRecorded)` registers `fn(session, deliveries)`;
    `@handlers.before(AvatarUsed)` an optional check outside the transaction."""

    def __init__(self, batch_size: int = 200, linger_seconds: float = 0.01, max_defer_seconds: float = 30.0):
        self.batch_size, self.linger_seconds, self.max_defer_seconds = batch_size, linger_seconds, max_defer_seconds
        self.by_type: dict[str, BatchHandler] = {}
        self.preparers: dict[str, Preparer] = {}

    def on(self, event: type[Event]) -> Callable[[BatchHandler], BatchHandler]:
        def register(fn: BatchHandler) -> BatchHandler:
            self.by_type[event.type] = fn
            return fn

        return register

    def before(self, event: type[Event]) -> Callable[[Preparer], Preparer]:
        def register(fn: Preparer) -> Preparer:
            self.preparers[event.type] = fn
            return fn

        return register


class BatchConsumer(Consumer):
    """Prefetches up to twice the batch size, so the next batch fills while one commits."""

    def __init__(
        self,
        name: str,
        db: Database,
        broker: Broker,
        handlers: BatchHandlers,
        *,
        queue_prefix: str = "",
        delivery_limit: int = 5,
        retry_delay: float = 0.2,
    ):
        registry = EventHandlers()
        registry.by_type = dict.fromkeys(handlers.by_type, _never)  # the queue's bindings
        super().__init__(
            name,
            db,
            broker,
            registry,
            queue_prefix=queue_prefix,
            prefetch=handlers.batch_size * 2,
            delivery_limit=delivery_limit,
            retry_delay=retry_delay,
        )
        self.batch = handlers
        self._incoming: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._deferred = 0  # deferred messages waiting for their retry: unacked, older than later batches
        self._tasks: set[asyncio.Task[None]] = set()
        self._processing: asyncio.Future[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await super().start()
        self._spawn(self._run())

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """The batch being handled gets `drain_seconds` to commit; messages still waiting in memory or deferred
        go back to the queue when the channel closes."""
        self._stopping = True
        await self._stop_consuming()
        if self._processing is not None and not self._processing.done() and drain_seconds > 0:
            await asyncio.wait({self._processing}, timeout=drain_seconds)
        for task in [*self._tasks, *filter(None, [self._processing])]:
            task.cancel()
        await self._close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._incoming.put_nowait(message)

    async def _run(self) -> None:
        while not self._stopping:
            batch = await self._next_batch()
            if self._stopping:
                return  # not started: these go back to the queue
            self._processing = asyncio.ensure_future(self._process(batch))
            try:
                await self._processing
            except Exception as exc:  # never lose the loop: whatever is unacked is redelivered
                log.error("event_batch_crashed", queue=self.name, error=repr(exc))

    async def _next_batch(self) -> list[AbstractIncomingMessage]:
        loop = asyncio.get_running_loop()
        batch = [await self._incoming.get()]
        deadline = loop.time() + self.batch.linger_seconds
        while len(batch) < self.batch.batch_size:
            if not self._incoming.empty():
                batch.append(self._incoming.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._incoming.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _process(self, messages: list[AbstractIncomingMessage]) -> None:
        deliveries: list[Delivery] = []
        for message in messages:
            try:
                envelope, event = self._decode(message)
                if envelope.type not in self.batch.by_type:
                    raise Poison(f"no handler for {envelope.type}")
            except Poison as exc:
                await self._dead_letter(message, f"poison: {exc}")
                continue
            deliveries.append(Delivery(envelope, event, message))
        ready = await self._prepared(deliveries)
        if not ready:
            return
        try:
            with metrics.timed(metrics.HANDLER_DURATION, self.name):
                async with self.db.unit_of_work() as session:
                    fresh = await claim_many(session, self.name, _unique([d.envelope for d in ready]))
                    await self._apply_batch(session, _first_of_each(d for d in ready if d.envelope.id in fresh))
        except Exception as exc:
            if is_outage(exc):  # nobody's fault: each waits unacked, without using up its deliveries
                for delivery in ready:
                    self._defer(delivery, 0, exc)
                return
            log.warning("event_batch_failed", queue=self.name, size=len(ready), error=repr(exc))
            for delivery in ready:  # alone now: a poison message takes only itself down
                await self._one(delivery)
            return
        await self._ack_all(ready)
        metrics.consumed(self.name, "handled", len(fresh))
        metrics.consumed(self.name, "duplicate", len(ready) - len(fresh))
        log.info("event_batch_handled", queue=self.name, size=len(ready), new=len(fresh))

    async def _ack_all(self, ready: list[Delivery]) -> None:
        """One `multiple` ack for the batch when nothing older is still unsettled on the channel: every
        message delivered before the batch's last one is in this batch or already acked or dead-lettered
        (deliveries arrive in order, a batch takes them in order, and its rejects were settled before it
        committed). A deferred message is unacked and older, so while one waits, each is acked alone."""
        last = max(ready, key=lambda d: d.message.delivery_tag or 0)
        if self._deferred == 0 and all(d.message.delivery_tag is not None for d in ready):
            await last.message.ack(multiple=True)
            return
        for delivery in ready:
            await delivery.message.ack()

    async def _apply_batch(self, session: AsyncSession, deliveries: list[Delivery]) -> None:
        by_type: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_type.setdefault(delivery.envelope.type, []).append(delivery)
        for event_type, group in by_type.items():
            await self.batch.by_type[event_type](session, group)

    async def _prepared(self, deliveries: list[Delivery], attempt: int = 0) -> list[Delivery]:
        """The deliveries that go on to the transaction; the others are dead-lettered, deferred or retried."""
        rejected: dict[str, Exception] = {}
        alone: list[Delivery] = []
        for event_type, preparer in self.batch.preparers.items():
            group = [d for d in deliveries if d.envelope.type == event_type]
            if not group:
                continue
            try:
                rejected.update(await preparer(group))
            except Exception as exc:
                if len(group) > 1 and not is_outage(exc):
                    alone.extend(group)  # one bad event must not use up its group's deliveries: each checked alone
                    continue
                rejected.update(dict.fromkeys((d.envelope.id for d in group), exc))
        passed_alone = {id(d) for single in alone for d in await self._prepared([single], attempt)}
        checked_alone = {id(d) for d in alone}
        ready = []
        for delivery in deliveries:  # in their order: a handler may rely on it across event types
            fate = rejected.get(delivery.envelope.id)
            if id(delivery) in checked_alone:
                if id(delivery) in passed_alone:  # otherwise its own check settled it
                    ready.append(delivery)
            elif fate is None:
                ready.append(delivery)
            elif isinstance(fate, Poison):
                await self._dead_letter(delivery.message, f"poison: {fate}")
            elif isinstance(fate, Defer) or is_outage(fate):
                self._defer(delivery, attempt, fate)
            else:
                await self._retry_or_dead_letter(delivery.message, fate)
        return ready

    def _defer(self, delivery: Delivery, attempt: int, reason: Exception) -> None:
        delay = min(self.retry_delay * 2**attempt, self.batch.max_defer_seconds)
        log.warning("event_deferred", queue=self.name, eventId=delivery.envelope.id, retryIn=delay, reason=str(reason))
        metrics.consumed(self.name, "deferred")

        async def later() -> None:
            try:
                await asyncio.sleep(delay)
                await self._one(delivery, attempt + 1)
            finally:
                self._deferred -= 1

        self._deferred += 1
        self._spawn(later())

    async def _one(self, delivery: Delivery, attempt: int = 0) -> None:
        """A delivery on its own: its own checks, its own transaction, its own fate."""
        if not await self._prepared([delivery], attempt):
            return
        try:
            with metrics.timed(metrics.HANDLER_DURATION, self.name):
                async with self.db.unit_of_work() as session:
                    handled = await claim(session, self.name, delivery.envelope)
                    if handled:
                        await self._apply_batch(session, [delivery])
        except Poison as exc:
            await self._dead_letter(delivery.message, f"poison: {exc}")
            return
        except Exception as exc:
            if isinstance(exc, Defer) or is_outage(exc):
                self._defer(delivery, attempt, exc)
            else:
                await self._retry_or_dead_letter(delivery.message, exc)
            return
        await delivery.message.ack()
        metrics.consumed(self.name, "handled" if handled else "duplicate")


async def _never(session: AsyncSession, event: Any, envelope: Envelope) -> None:
    raise AssertionError("batch handlers are called by BatchConsumer")


def _unique(envelopes: list[Envelope]) -> list[Envelope]:
    return list({e.id: e for e in envelopes}.values())


def _first_of_each(deliveries: Iterable[Delivery]) -> list[Delivery]:
    """A redelivered copy in the same batch as its original is handled once."""
    seen: dict[str, Delivery] = {}
    for delivery in deliveries:
        seen.setdefault(delivery.envelope.id, delivery)
    return list(seen.values())


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
