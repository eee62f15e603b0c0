"""Generation use cases on the service's own database. No commits and no calls out: the caller's unit of work
commits each state change together with its stream event, its outbox events and its credit commands.

The money rule lives here (`settle`): the images that became avatars paid the first holds (15, then 10 each),
each captured by avatars in the avatar's own transaction; every other hold is released through this service's
outbox in the transaction that settles the job. A hold is released only when no image that might be its avatar
is still unresolved ("storing"), so a release never races the capture of an avatar that exists.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common import metrics
from lumiku_common.clients.credits import release_command
from lumiku_common.clients.projects import ProjectNotFound
from lumiku_common.db import utcnow
from lumiku_common.errors import NotFound
from lumiku_common.messaging.events import GenerationFinished, RunGeneration
from lumiku_common.messaging.outbox import add_event
from lumiku_generation.models import TERMINAL, Generation, GenerationImage
from lumiku_generation.repository import GenerationRepository
from lumiku_generation.schemas import GenerationOut
from lumiku_generation.settings import GenerationSettings


class GenerationNotFound(NotFound):
    message = "Generation not found"


async def out(session: AsyncSession, job: Generation) -> GenerationOut:
    if not job.produced:  # most status events (queued, running, failed): no avatar to look up
        return GenerationOut.of(job, [])
    ids = await GenerationRepository(session).avatar_ids([job.id])
    return GenerationOut.of(job, ids[job.id])


async def get(session: AsyncSession, user_id: str, job_id: str) -> Generation:
    job = await GenerationRepository(session).get(user_id, job_id)
    if job is None:
        raise GenerationNotFound()
    return job


async def submitted(session: AsyncSession, user_id: str, job_id: str) -> bool:
    """Whether the job's creating transaction committed; waits for it to end if it still runs (a COMMIT whose
    answer was lost may still be landing)."""
    repo = GenerationRepository(session)
    await repo.lock_submission(job_id)
    return await repo.get(user_id, job_id) is not None


async def page(session: AsyncSession, user_id: str, offset: int, limit: int) -> tuple[list[GenerationOut], int]:
    repo = GenerationRepository(session)
    jobs, total = await repo.page(user_id, offset, limit)
    ids = await repo.avatar_ids([j.id for j in jobs])
    return [GenerationOut.of(j, ids[j.id]) for j in jobs], total


async def _status_event(session: AsyncSession, job: Generation, kind: str | None = None) -> None:
    data = {"generation": (await out(session, job)).model_dump(mode="json")}
    await GenerationRepository(session).append_event(job.id, kind or job.status, data)


async def _dispatch(session: AsyncSession, job: Generation) -> None:
    job.dispatched_at = utcnow()
    await add_event(session, RunGeneration(generation_id=job.id), user_id=job.user_id, subject=job.id)


async def create(session: AsyncSession, job: Generation, images: list[GenerationImage]) -> None:
    """The job, its images, its first stream event and the command that sends it to the workers, at once. Refused
    (ProjectNotFound) once its project's deletion was handled here: the cascade has run and would not see it."""
    repo = GenerationRepository(session)
    await repo.lock_submission(job.id)
    await repo.lock_project(job.project_id)
    if await repo.project_deleted(job.project_id):
        raise ProjectNotFound()
    await repo.add(job, images)
    await _status_event(session, job)
    await _dispatch(session, job)


async def claim(
    session: AsyncSession, settings: GenerationSettings, job_id: str, owner: str, now: datetime
) -> Generation | None:
    """Takes the job for `owner` (a lease) if it may run now; None if it is finished, held by a live worker, or
    its user already runs `max_running_per_user` jobs (it stays queued; it is sent again when one of those ends)."""
    repo = GenerationRepository(session)
    job = await repo.lock(job_id)
    if job is None or job.status in TERMINAL:
        return None
    if job.status == "running" and job.lease_until is not None and job.lease_until > now:
        return None
    if now >= job.deadline:
        await terminate(session, settings, job, "failed", "generation timed out")
        return None
    await repo.lock_user(job.user_id)
    if (
        job.status == "queued"
        and await repo.running_elsewhere(job.user_id, job.id, now) >= settings.max_running_per_user
    ):
        return None
    was_queued = job.status == "queued"
    job.status, job.lease_owner = "running", owner
    job.lease_until = now + timedelta(seconds=settings.lease_seconds)
    job.started_at = job.started_at or now
    job.runs += 1
    await session.flush()
    if was_queued:
        await _status_event(session, job)
    return job


async def renew(session: AsyncSession, settings: GenerationSettings, job_id: str, owner: str) -> bool:
    return await GenerationRepository(session).renew(
        job_id, owner, utcnow() + timedelta(seconds=settings.lease_seconds)
    )


async def owned(session: AsyncSession, job_id: str, owner: str) -> Generation | None:
    """The job, locked, if `owner` still runs it (not canceled, lease not taken over)."""
    job = await GenerationRepository(session).lock(job_id)
    if job is None or job.status != "running" or job.lease_owner != owner:
        return None
    return job


async def image(session: AsyncSession, image_id: str) -> GenerationImage:
    found = await GenerationRepository(session).image(image_id)
    if found is None:
        raise GenerationNotFound()
    return found


async def images(session: AsyncSession, job_id: str) -> list[GenerationImage]:
    return await GenerationRepository(session).images(job_id)


async def unfinished_images(session: AsyncSession, job_id: str) -> int:
    """Images of the job neither stored nor failed."""
    return await GenerationRepository(session).unfinished_images(job_id)


async def paid_avatars(session: AsyncSession, job_id: str) -> list[dict[str, Any]]:
    """The job's avatars in the order they were paid (the first paid the first image's price)."""
    return await GenerationRepository(session).paid_avatars(job_id)


def received(img: GenerationImage, data: bytes, provider: str, model: str) -> None:
    img.status, img.data, img.provider, img.model = "received", data, provider, model


class StoreCutShort(RuntimeError):
    """A hold was asked for while another image's store is unresolved: resolve that one first."""


async def assign_hold(session: AsyncSession, job: Generation, img: GenerationImage) -> None:
    """The lowest hold no other image holds. Stores run one at a time per job, a store cut short is resolved
    before any other image takes a hold, and a failed store gives its hold back, so the stored images always
    hold 0..k-1: they pay 15 + 10 x (k - 1). (Had another image taken hold 1 while the one holding hold 0 was
    still unresolved and then failed, one avatar would have paid the variation's 10.)"""
    if img.hold_index is not None:
        return
    others = [i for i in await images(session, job.id) if i.id != img.id]
    if any(i.status == "storing" for i in others):
        raise StoreCutShort(f"generation {job.id}: an image's store is unresolved")
    taken = {i.hold_index for i in others if i.hold_index is not None}
    img.hold_index = min(set(range(job.count)) - taken)
    img.status = "storing"
    await session.flush()


async def stored(session: AsyncSession, job: Generation, img: GenerationImage, avatar: dict[str, Any]) -> None:
    img.status, img.avatar, img.data, img.error = "stored", avatar, None, None
    job.produced += 1
    await session.flush()
    data = {"imageIndex": img.index, "seed": img.seed, "avatarId": img.id, "avatar": avatar, "produced": job.produced}
    await GenerationRepository(session).append_event(job.id, "image", data)


async def image_failed(session: AsyncSession, job: Generation, img: GenerationImage, reason: str) -> None:
    """No avatar exists for this image (or ever will): its hold, if it had one, goes back to the job."""
    img.status, img.error, img.hold_index, img.data = "failed", reason[:1000], None, None
    await session.flush()
    await GenerationRepository(session).append_event(job.id, "image_failed", {"imageIndex": img.index, "error": reason})


async def finish(session: AsyncSession, settings: GenerationSettings, job: Generation) -> None:
    """Every image is stored or failed: the job's outcome follows from how many became avatars."""
    found = await images(session, job.id)
    errors = [i.error for i in found if i.status == "failed" and i.error]
    status = "succeeded" if job.produced == job.count else "partially_succeeded" if job.produced else "failed"
    await terminate(session, settings, job, status, errors[0] if errors and status != "succeeded" else None)


async def terminate(
    session: AsyncSession, settings: GenerationSettings, job: Generation, status: str, error: str | None
) -> None:
    """The terminal status (once: it never changes afterwards), the money settled when it can be, and the user's
    next queued job sent to the workers."""
    if job.status in TERMINAL:
        return
    was_running = job.status == "running"
    job.status, job.error, job.finished_at = status, error, utcnow()
    metrics.GENERATION_FINISHED.labels(status).inc()  # at the decision: a rollback (rare) may count it twice
    job.lease_owner, job.lease_until = None, None
    await session.flush()
    await settle(session, settings, job)
    await _status_event(session, job)
    if was_running:
        repo = GenerationRepository(session)
        for waiting in await repo.oldest_queued(job.user_id, settings.max_running_per_user):
            await _dispatch(session, waiting)


async def settle(session: AsyncSession, settings: GenerationSettings, job: Generation) -> bool:
    """Releases every hold no avatar pays; False (nothing done) while an image's outcome is unknown."""
    if job.settled:
        return True
    found = await images(session, job.id)
    if any(i.status == "storing" for i in found):
        return False
    paid = {i.hold_index for i in found if i.status == "stored" and i.hold_index is not None}
    for index, hold_id in enumerate(job.hold_ids):
        if index not in paid:
            await release_command(session, job.user_id, hold_id, f"generation {job.status}")
    job.charged = sum(settings.price(i) for i in paid)
    job.refunded = job.cost - job.charged
    job.settled = True
    await session.flush()
    summary = await out(session, job)
    await add_event(
        session,
        GenerationFinished(
            generation_id=job.id,
            project_id=job.project_id,
            status=summary.status,
            count=job.count,
            produced=job.produced,
            avatar_ids=summary.avatar_ids,
            cost=job.cost,
            charged=job.charged,
            refunded=job.refunded,
            error=job.error,
        ),
        user_id=job.user_id,
        subject=job.id,
    )
    return True


async def forget_project(session: AsyncSession, settings: GenerationSettings, project_id: str) -> int:
    """`project.deleted`: its queued and running jobs are canceled and their holds released, then every job of
    it whose money is settled is deleted with its images and events. A job with an image whose outcome is
    unknown is settled by the sweep (which asks avatars), and deleted then (`forget_settled`)."""
    repo = GenerationRepository(session)
    await repo.lock_project(project_id)  # a job being created in it either committed before, or is refused after
    await repo.mark_project_deleted(project_id)
    jobs = await repo.active_in_project(project_id)
    for job in jobs:
        await terminate(session, settings, job, "canceled", "Project deleted")
    await repo.forget_settled_of_deleted_projects(project_id)
    return len(jobs)


async def forget_settled(session: AsyncSession) -> int:
    """The jobs of deleted projects that have been settled since their project went."""
    return await GenerationRepository(session).forget_settled_of_deleted_projects()


async def redispatch_stalled(session: AsyncSession, settings: GenerationSettings, now: datetime) -> int:
    """Jobs whose worker died (lease expired) or whose command was never picked up go to the workers again;
    jobs past their deadline that nobody runs are failed and released."""
    repo, limit = GenerationRepository(session), 100
    overdue = await repo.overdue(now, limit)
    for job in overdue:
        await terminate(session, settings, job, "failed", "generation timed out")
    stalled = await repo.expired_leases(now, limit)
    stalled += await repo.stale_queued(now - timedelta(seconds=settings.redispatch_seconds), limit)
    for job in stalled:
        await _dispatch(session, job)
    return len(overdue) + len(stalled)


async def unsettled(session: AsyncSession, limit: int = 50) -> list[str]:
    return await GenerationRepository(session).unsettled_finished(limit)


async def lock(session: AsyncSession, job_id: str) -> Generation | None:
    return await GenerationRepository(session).lock(job_id)


async def lock_for_user(session: AsyncSession, user_id: str, job_id: str) -> Generation:
    job = await GenerationRepository(session).lock(job_id)
    if job is None or job.user_id != user_id:
        raise GenerationNotFound()
    return job


async def events_after(session: AsyncSession, job_id: str, seq: int) -> list[tuple[int, str, dict[str, Any]]]:
    return [(e.seq, e.type, e.data) for e in await GenerationRepository(session).events_after(job_id, seq)]
