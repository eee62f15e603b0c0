"""What the avatars service does when other services' events arrive."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_avatars import service
from lumiku_avatars.objects import ObjectJanitor
from lumiku_common.messaging.consumer import BatchHandlers, Delivery, EventHandlers
from lumiku_common.messaging.events import Envelope, ProjectDeleted, UsageRecorded


def project_handlers(janitor: ObjectJanitor) -> EventHandlers:
    handlers = EventHandlers()

    @handlers.on(ProjectDeleted)
    async def _project_deleted(session: AsyncSession, event: ProjectDeleted, envelope: Envelope) -> None:
        await service.delete_project_avatars(session, janitor, event.project_id, envelope.user_id)

    return handlers


def usage_handlers() -> BatchHandlers:
    """Counters follow `usage.recorded`, in batches: a burst of uses is a few transactions, not one each."""
    handlers = BatchHandlers(batch_size=500)

    @handlers.on(UsageRecorded)
    async def _usage_recorded(session: AsyncSession, deliveries: list[Delivery]) -> None:
        await service.record_usages(session, [(d.event, d.envelope.user_id) for d in deliveries])

    return handlers
