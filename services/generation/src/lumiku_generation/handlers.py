"""What the generation service does with the messages it consumes: its own work queue, and project deletions."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.errors import is_outage
from lumiku_common.logs import get_logger
from lumiku_common.messaging.consumer import EventHandlers
from lumiku_common.messaging.events import Envelope, ProjectDeleted, RunGeneration
from lumiku_generation import service
from lumiku_generation.settings import GenerationSettings
from lumiku_generation.workflows import GenerationWorkflows

log = get_logger(__name__)

JOBS_QUEUE = "generation.jobs"
PROJECTS_QUEUE = "generation.project-events"


def job_handlers(workflows: GenerationWorkflows) -> EventHandlers:
    """The work queue: each worker process runs `jobs_per_worker` jobs at once (its prefetch); a job's message
    stays unacked while it runs, so a worker that dies has it redelivered to another."""
    handlers = EventHandlers(prefetch=workflows.settings.jobs_per_worker)

    @handlers.work(RunGeneration)
    async def _run(event: RunGeneration, _: Envelope) -> None:
        try:
            await workflows.run(event.generation_id)
        except Exception as exc:
            if not is_outage(exc):
                raise
            # Retrying at once would use up the command's deliveries within seconds and dead-letter a job that is
            # fine: the run gave its lease back, so the sweeper sends the job to a worker again once it can.
            log.warning("generation_run_postponed", generationId=event.generation_id, error=repr(exc)[:300])

    return handlers


def project_handlers(settings: GenerationSettings) -> EventHandlers:
    handlers = EventHandlers()

    @handlers.on(ProjectDeleted)
    async def _project_deleted(session: AsyncSession, event: ProjectDeleted, _: Envelope) -> None:
        await service.forget_project(session, settings, event.project_id)

    return handlers
