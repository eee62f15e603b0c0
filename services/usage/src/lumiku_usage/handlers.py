"""What the usage service does with the events it consumes."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.messaging.consumer import BatchHandlers, Delivery, EventHandlers, Poison
from lumiku_common.messaging.events import AvatarCreated, AvatarDeleted, AvatarUsed, Envelope
from lumiku_usage import service
from lumiku_usage.service import Use
from lumiku_usage.workflows import UsageWorkflows

AVATAR_EVENTS = "usage.avatar-events"
AVATAR_USED = "usage.avatar-used"


def avatar_handlers() -> EventHandlers:
    """The ownership projection, and history deletion with the avatar (a project's deletion cascades as
    one `avatar.deleted` per avatar)."""
    handlers = EventHandlers()

    @handlers.on(AvatarCreated)
    async def _created(session: AsyncSession, event: AvatarCreated, envelope: Envelope) -> None:
        if not envelope.user_id:
            raise Poison("avatar.created without userId")
        await service.remember_avatar(session, event.avatar_id, envelope.user_id)

    @handlers.on(AvatarDeleted)
    async def _deleted(session: AsyncSession, event: AvatarDeleted, envelope: Envelope) -> None:
        if not envelope.user_id:
            raise Poison("avatar.deleted without userId")
        await service.forget_avatar(session, event.avatar_id, envelope.user_id)

    return handlers


def usage_handlers(workflows: UsageWorkflows, batch_size: int, max_defer_seconds: float) -> BatchHandlers:
    """`avatar.used` from the sibling apps, in batches: ownership checked before, one transaction each."""
    handlers = BatchHandlers(batch_size=batch_size, max_defer_seconds=max_defer_seconds)
    handlers.before(AvatarUsed)(workflows.check_events)

    @handlers.on(AvatarUsed)
    async def _used(session: AsyncSession, deliveries: list[Delivery]) -> None:
        await service.record(session, [_use(d) for d in deliveries])

    return handlers


def _use(delivery: Delivery) -> Use:
    event: AvatarUsed = delivery.event
    return Use(
        user_id=delivery.envelope.user_id or "",
        avatar_id=event.avatar_id,
        app_id=event.app_id,
        app_name=event.app_name or event.app_id,
        action=event.action,
        reference_id=event.reference_id,
        reference_type=event.reference_type,
        metadata=event.metadata,
        used_at=event.used_at or delivery.envelope.time,
        context=delivery.context(),
    )
