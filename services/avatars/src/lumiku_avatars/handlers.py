"""What the avatars service does when other services' events arrive."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_avatars import service
from lumiku_avatars.objects import ObjectJanitor
from lumiku_common.messaging.consumer import EventHandlers
from lumiku_common.messaging.events import Envelope, ProjectDeleted, UsageRecorded


def project_handlers(janitor: ObjectJanitor) -> EventHandlers:
    handlers = EventHandlers()

    @handlers.on(ProjectDeleted)
    async def _project_deleted(session: AsyncSession, event: ProjectDeleted, envelope: Envelope) -> None:
        await service.delete_project_avatars(session, janitor, event.project_id, envelope.user_id)

    return handlers


def usage_handlers() -> EventHandlers:
    handlers = EventHandlers()

    @handlers.on(UsageRecorded)
    async def _usage_recorded(session: AsyncSession, event: UsageRecorded, envelope: Envelope) -> None:
        await service.record_usage(session, event, envelope.user_id)

    return handlers
