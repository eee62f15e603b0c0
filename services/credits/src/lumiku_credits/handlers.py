"""`credits.capture` / `credits.release` commands, sent through a caller's outbox after its work committed.

Delivery is at least once and the inbox drops redeliveries. A command for a hold that is already settled
(captured, released or expired) is a no-op by design: the caller is told nothing new, no money moves, and
the message is acked instead of looping. One exception: a capture whose hold expired only because the
command arrived late (the work committed before the expiry) is still charged, when the credits allow.
A command that can never be right (unknown hold, wrong owner, bad amount, an idempotency key reused for
another request, a late capture the credits no longer cover) is dead-lettered at once for a human.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.clients.credits import CaptureRequest, ReleaseRequest
from lumiku_common.idempotency import IdempotencyConflict, Outcome
from lumiku_common.logs import get_logger
from lumiku_common.messaging.consumer import EventHandlers, Poison
from lumiku_common.messaging.events import CaptureCredits, Envelope, ReleaseCredits
from lumiku_credits import service
from lumiku_credits.service import CaptureExceedsHold, HoldNotFound, HoldSettled, LateCaptureUnaffordable

log = get_logger(__name__)

QUEUE = "credits.commands"


def command_handlers() -> EventHandlers:
    handlers = EventHandlers()

    @handlers.on(CaptureCredits)
    async def on_capture(session: AsyncSession, command: CaptureCredits, envelope: Envelope) -> None:
        body = _body(CaptureRequest, {"idempotencyKey": command.idempotency_key, "amount": command.amount})
        await _settle(
            session,
            envelope,
            command.hold_id,
            # The command was staged in the caller's transaction: its time is when the paid-for work committed.
            lambda: service.capture(session, command.hold_id, body, envelope.user_id, work_done_at=envelope.time),
        )

    @handlers.on(ReleaseCredits)
    async def on_release(session: AsyncSession, command: ReleaseCredits, envelope: Envelope) -> None:
        body = _body(ReleaseRequest, {"idempotencyKey": command.idempotency_key, "reason": command.reason})
        await _settle(
            session,
            envelope,
            command.hold_id,
            lambda: service.release(session, command.hold_id, body, envelope.user_id),
        )

    return handlers


M = TypeVar("M", bound=BaseModel)


def _body(model: type[M], values: dict[str, Any]) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise Poison(f"invalid command: {exc.errors(include_url=False)}") from exc


async def _settle(
    session: AsyncSession, envelope: Envelope, hold_id: str, action: Callable[[], Awaitable[Outcome]]
) -> None:
    try:
        # A savepoint: a refused command leaves nothing behind but the inbox row that marks it handled.
        async with session.begin_nested():
            outcome = await action()
    except HoldSettled as exc:
        log.warning("credits_command_ignored", command=envelope.type, holdId=hold_id, reason=exc.message)
        return
    except (HoldNotFound, IdempotencyConflict, CaptureExceedsHold, LateCaptureUnaffordable) as exc:
        raise Poison(f"{envelope.type} for hold {hold_id}: {exc.message}") from exc
    log.info("credits_command_applied", command=envelope.type, holdId=hold_id, replayed=outcome.replayed)
