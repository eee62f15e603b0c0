"""Every query of the generation service."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.db import lock_name
from lumiku_generation.models import ACTIVE, TERMINAL, DeletedProject, Generation, GenerationEvent, GenerationImage

NOTIFY_CHANNEL = "lumiku_generation"


class GenerationRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def active_counts(self) -> dict[str, int]:
        """Unfinished jobs by status (the partial index of active jobs)."""
        rows = await self.session.execute(
            select(Generation.status, func.count()).where(Generation.status.in_(ACTIVE)).group_by(Generation.status)
        )
        return {status: int(count) for status, count in rows}

    async def add(self, job: Generation, images: Sequence[GenerationImage]) -> None:
        self.session.add(job)
        await self.session.flush()
        self.session.add_all(images)
        await self.session.flush()

    async def lock(self, job_id: str) -> Generation | None:
        result = await self.session.execute(
            select(Generation)
            .where(Generation.id == job_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return result.scalar_one_or_none()

    async def get(self, user_id: str, job_id: str) -> Generation | None:
        result = await self.session.execute(
            select(Generation).where(Generation.id == job_id, Generation.user_id == user_id)
        )
        return result.scalar_one_or_none()

    async def page(self, user_id: str, offset: int, limit: int) -> tuple[list[Generation], int]:
        where = Generation.user_id == user_id
        total = await self.session.scalar(select(func.count()).select_from(Generation).where(where))
        rows = await self.session.execute(
            select(Generation)
            .where(where)
            .order_by(Generation.created_at.desc(), Generation.id.desc())
            .offset(offset)
            .limit(limit)
        )
        return list(rows.scalars()), int(total or 0)

    async def images(self, job_id: str) -> list[GenerationImage]:
        result = await self.session.execute(
            select(GenerationImage)
            .where(GenerationImage.generation_id == job_id)
            .order_by(GenerationImage.index)
            .execution_options(populate_existing=True)
        )
        return list(result.scalars())

    async def image(self, image_id: str) -> GenerationImage | None:
        result = await self.session.execute(
            select(GenerationImage).where(GenerationImage.id == image_id).execution_options(populate_existing=True)
        )
        return result.scalar_one_or_none()

    async def unfinished_images(self, job_id: str) -> int:
        return int(
            await self.session.scalar(
                select(func.count())
                .select_from(GenerationImage)
                .where(GenerationImage.generation_id == job_id, GenerationImage.status.not_in(("stored", "failed")))
            )
            or 0
        )

    async def paid_avatars(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self.session.scalars(
            select(GenerationImage.avatar)
            .where(GenerationImage.generation_id == job_id, GenerationImage.status == "stored")
            .order_by(GenerationImage.hold_index)
        )
        return [avatar for avatar in rows if avatar is not None]

    async def avatar_ids(self, job_ids: Sequence[str]) -> dict[str, list[str]]:
        """The avatars of each job, in the order they were paid (the first one paid the first image's price)."""
        found: dict[str, list[str]] = {job_id: [] for job_id in job_ids}
        if not job_ids:
            return found
        rows = await self.session.execute(
            select(GenerationImage.generation_id, GenerationImage.id)
            .where(GenerationImage.generation_id.in_(job_ids), GenerationImage.status == "stored")
            .order_by(GenerationImage.hold_index)
        )
        for job_id, image_id in rows.all():
            found[job_id].append(image_id)
        return found

    async def lock_submission(self, job_id: str) -> None:
        """Held by the transaction that creates the job until it ends (transaction-scoped), so whoever asks
        whether that transaction committed waits for its outcome instead of reading too early."""
        await lock_name(self.session, f"generation:{job_id}")

    async def lock_project(self, project_id: str) -> None:
        """Serialises job creation in a project with that project's `project.deleted` (transaction-scoped)."""
        await lock_name(self.session, f"generation-project:{project_id}")

    async def project_deleted(self, project_id: str) -> bool:
        found = await self.session.scalar(
            select(DeletedProject.project_id).where(DeletedProject.project_id == project_id)
        )
        return found is not None

    async def lock_user(self, user_id: str) -> None:
        """Serialises the per-user concurrency decisions of one user (transaction-scoped)."""
        await lock_name(self.session, f"generation-user:{user_id}")

    async def running_elsewhere(self, user_id: str, job_id: str, now: datetime) -> int:
        return int(
            await self.session.scalar(
                select(func.count())
                .select_from(Generation)
                .where(
                    Generation.user_id == user_id,
                    Generation.id != job_id,
                    Generation.status == "running",
                    Generation.lease_until > now,
                )
            )
            or 0
        )

    async def oldest_queued(self, user_id: str, limit: int) -> list[Generation]:
        result = await self.session.execute(
            select(Generation)
            .where(Generation.user_id == user_id, Generation.status == "queued")
            .order_by(Generation.created_at)
            .limit(limit)
        )
        return list(result.scalars())

    async def append_event(self, job_id: str, kind: str, data: dict[str, Any]) -> int:
        """The next event of the job's stream; callers hold the job's row lock, so `seq` has no gaps or races.
        NOTIFY (delivered at commit) wakes the streams and synchronous waits of every API process."""
        seq = (
            int(
                await self.session.scalar(
                    select(func.coalesce(func.max(GenerationEvent.seq), 0)).where(
                        GenerationEvent.generation_id == job_id
                    )
                )
                or 0
            )
            + 1
        )
        await self.session.execute(insert(GenerationEvent).values(generation_id=job_id, seq=seq, type=kind, data=data))
        await self.session.execute(text("SELECT pg_notify(:c, :p)"), {"c": NOTIFY_CHANNEL, "p": job_id})
        return seq

    async def events_after(self, job_id: str, seq: int, limit: int = 100) -> list[GenerationEvent]:
        result = await self.session.execute(
            select(GenerationEvent)
            .where(GenerationEvent.generation_id == job_id, GenerationEvent.seq > seq)
            .order_by(GenerationEvent.seq)
            .limit(limit)
        )
        return list(result.scalars())

    async def renew(self, job_id: str, owner: str, until: datetime) -> bool:
        result = await self.session.execute(
            update(Generation)
            .where(Generation.id == job_id, Generation.lease_owner == owner, Generation.status == "running")
            .values(lease_until=until)
            .returning(Generation.id)
        )
        return result.first() is not None

    async def mark_project_deleted(self, project_id: str) -> None:
        await self.session.execute(pg_insert(DeletedProject).values(project_id=project_id).on_conflict_do_nothing())

    async def forget_settled_of_deleted_projects(self, project_id: str | None = None) -> int:
        """Deletes the settled jobs of deleted projects (of one, or of all), their images and events with them."""
        deleted = select(DeletedProject.project_id)
        if project_id is not None:
            deleted = deleted.where(DeletedProject.project_id == project_id)
        result = await self.session.execute(
            delete(Generation).where(
                Generation.settled, Generation.status.in_(TERMINAL), Generation.project_id.in_(deleted)
            )
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def active_in_project(self, project_id: str) -> list[Generation]:
        result = await self.session.execute(
            select(Generation)
            .where(Generation.project_id == project_id, Generation.status.in_(ACTIVE))
            .with_for_update()
        )
        return list(result.scalars())

    async def expired_leases(self, now: datetime, limit: int) -> list[Generation]:
        result = await self.session.execute(
            select(Generation)
            .where(Generation.status == "running", Generation.lease_until < now)
            .with_for_update(skip_locked=True)
            .limit(limit)
        )
        return list(result.scalars())

    async def stale_queued(self, before: datetime, limit: int) -> list[Generation]:
        result = await self.session.execute(
            select(Generation)
            .where(Generation.status == "queued", Generation.dispatched_at < before)
            .with_for_update(skip_locked=True)
            .limit(limit)
        )
        return list(result.scalars())

    async def overdue(self, now: datetime, limit: int) -> list[Generation]:
        """Unfinished jobs past their deadline that no live worker holds."""
        result = await self.session.execute(
            select(Generation)
            .where(
                Generation.status.in_(ACTIVE),
                Generation.deadline < now,
                (Generation.lease_until.is_(None)) | (Generation.lease_until < now),
            )
            .with_for_update(skip_locked=True)
            .limit(limit)
        )
        return list(result.scalars())

    async def unsettled_finished(self, limit: int) -> list[str]:
        result = await self.session.execute(
            select(Generation.id).where(~Generation.settled, Generation.status.in_(TERMINAL)).limit(limit)
        )
        return list(result.scalars())
