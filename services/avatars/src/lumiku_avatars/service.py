"""Avatar use cases. No commits here: the caller's unit of work commits the change and its events together."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from asyncpg import Record
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_avatars.models import Avatar
from lumiku_avatars.objects import ObjectJanitor
from lumiku_avatars.repository import AvatarReads, AvatarRepository, CountedUse
from lumiku_avatars.schemas import AvatarFilters, AvatarOut, AvatarStats, AvatarUpdate
from lumiku_common.clients.avatars import AvatarNotFound, AvatarOwner, ImageGivenUp
from lumiku_common.clients.credits import capture_command
from lumiku_common.clients.projects import ProjectNotFound
from lumiku_common.db import Database, apply_changes, utcnow
from lumiku_common.errors import Conflict, Gone, ServiceUnavailable
from lumiku_common.media import MediaUrls
from lumiku_common.messaging.events import AvatarCreated, AvatarDeleted, AvatarUpdated, UsageRecorded
from lumiku_common.messaging.outbox import add_event


def _keys(avatar: Avatar) -> list[str]:
    return [k for k in (avatar.base_image_key, avatar.thumbnail_key) if k]


async def get_avatar(session: AsyncSession, user_id: str, avatar_id: str) -> Avatar:
    """The caller's avatar, locked for the change about to be made: a delete racing it (another request, or a
    project's cascade) either lands first, and this is a 404, or waits for this change to commit."""
    avatar = await AvatarRepository(session).get(user_id, avatar_id, for_update=True)
    if avatar is None:
        raise AvatarNotFound()
    return avatar


async def owner_of(session: AsyncSession, avatar_id: str) -> AvatarOwner:
    avatar = await AvatarRepository(session).by_id(avatar_id)
    if avatar is None:
        raise AvatarNotFound()
    return AvatarOwner(avatar_id=avatar.id, user_id=avatar.user_id, project_id=avatar.project_id)


async def list_avatars(
    session: AsyncSession, user_id: str, filters: AvatarFilters, offset: int, limit: int
) -> tuple[list[Avatar], int]:
    return await AvatarRepository(session).page(user_id, filters, offset, limit)


class ImageWasGivenUp(Gone):
    message = ImageGivenUp.message  # what the generation service's client raises for this 410


class GeneratedAvatarDeleted(Conflict):
    message = "The avatar of this generation image was made and has been deleted since"


class KeyedAvatarDeleted(Conflict):
    message = "Idempotency key already used for an avatar that has since been deleted"


class HoldLapsed(ServiceUnavailable):
    message = "The avatar took longer to make than its credits were held: nothing was kept, try again"


# An avatar is not committed this close to its hold's expiry: the commit, and the clocks of two services, fit in.
CAPTURE_MARGIN = timedelta(seconds=10)


async def create_avatar(
    session: AsyncSession, avatar: Avatar, hold_id: str, capture_by: datetime | None, generated: bool = False
) -> Avatar:
    """Inserts the avatar and, in the same transaction, stages its event and the capture of its credits:
    the charge happens if and only if the avatar commits. Credits refuses a capture for work done after the hold
    expired (`capture_by`) or after the hold was released, so such an avatar would be free: it is not made. A
    `generated` one is refused once its generation gave the image up (`settle_generated`, serialised with this
    by the project's lock)."""
    repository = AvatarRepository(session)
    await repository.lock_project(avatar.project_id)
    if await repository.project_deleted(avatar.project_id):
        raise ProjectNotFound()
    if generated and await repository.image_given_up(avatar.id):
        raise ImageWasGivenUp()
    if generated and await repository.deleted_generated(avatar.user_id, avatar.id) is not None:
        raise GeneratedAvatarDeleted()  # made by a twin of this attempt, then deleted: that avatar is the answer
    if capture_by is not None and utcnow() >= capture_by - CAPTURE_MARGIN:
        raise HoldLapsed()
    await repository.add(avatar)
    await add_event(
        session,
        AvatarCreated(
            avatar_id=avatar.id, project_id=avatar.project_id, name=avatar.name, source_type=avatar.source_type
        ),
        user_id=avatar.user_id,
        subject=avatar.id,
    )
    await capture_command(session, avatar.user_id, hold_id)
    return avatar


async def settle_generated(session: AsyncSession, user_id: str, project_id: str, image_id: str) -> Avatar | None:
    """The avatar the generation image became, else None, and then it never will: a create of it still in flight
    (a worker that died or gave up waiting) either committed before this, under the project's lock, or is refused
    after it. Its job may release the image's hold then."""
    repository = AvatarRepository(session)
    await repository.lock_project(project_id)
    avatar = await repository.get(user_id, image_id) or await repository.deleted_generated(user_id, image_id)
    if avatar is None:
        await repository.give_up_image(image_id)
    return avatar


async def update_avatar(session: AsyncSession, user_id: str, avatar_id: str, data: AvatarUpdate) -> Avatar:
    avatar = await get_avatar(session, user_id, avatar_id)
    changes = data.model_dump(exclude_none=True, by_alias=False)  # attribute names, not the wire's camelCase
    optional_text = {k for k, v in changes.items() if isinstance(v, str) and k != "name"}
    if not apply_changes(avatar, changes, clearable=optional_text):
        return avatar
    await session.flush()
    await add_event(
        session,
        AvatarUpdated(avatar_id=avatar.id, project_id=avatar.project_id, name=avatar.name),
        user_id=user_id,
        subject=avatar.id,
    )
    return avatar


async def _schedule_removal_and_announce(
    session: AsyncSession, janitor: ObjectJanitor, avatars: Sequence[Avatar]
) -> None:
    await AvatarRepository(session).remember_deleted_generated(avatars)
    await janitor.schedule(session, [k for a in avatars for k in _keys(a)])
    for avatar in avatars:
        await add_event(
            session,
            AvatarDeleted(avatar_id=avatar.id, project_id=avatar.project_id),
            user_id=avatar.user_id,
            subject=avatar.id,
        )


async def delete_avatar(session: AsyncSession, janitor: ObjectJanitor, user_id: str, avatar_id: str) -> None:
    avatar = await get_avatar(session, user_id, avatar_id)
    await AvatarRepository(session).delete(avatar)
    await _schedule_removal_and_announce(session, janitor, [avatar])


async def delete_project_avatars(
    session: AsyncSession, janitor: ObjectJanitor, project_id: str, user_id: str | None
) -> int:
    """The cascade of `project.deleted`: every avatar of the project, each with its own `avatar.deleted`."""
    repository = AvatarRepository(session)
    await repository.lock_project(project_id)
    await repository.mark_project_deleted(project_id)
    avatars = await repository.delete_project(project_id, user_id)
    await _schedule_removal_and_announce(session, janitor, avatars)
    return len(avatars)


async def record_usages(session: AsyncSession, usages: Sequence[tuple[UsageRecorded, str | None]]) -> int:
    """`usage.recorded` events (with the envelope's user id), counted once each; returns how many were new."""
    uses = [CountedUse(u.usage_id, u.avatar_id, u.used_at, user_id) for u, user_id in usages]
    return await AvatarRepository(session).count_usages(uses)


async def read_avatar(db: Database, user_id: str, avatar_id: str) -> Record:
    avatar = await AvatarReads(db).get(user_id, avatar_id)
    if avatar is None:
        raise AvatarNotFound()
    return avatar


async def newest_by_project(
    db: Database, user_id: str, project_ids: Sequence[str], per_project: int
) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {pid: [] for pid in project_ids}
    for avatar in await AvatarReads(db).newest_per_project(user_id, project_ids, per_project):
        grouped[avatar["project_id"]].append(avatar)
    return grouped


async def stats(session: AsyncSession, user_id: str, media: MediaUrls) -> AvatarStats:
    repo = AvatarRepository(session)
    total, uses, recent_count = await repo.totals(user_id, datetime.now(UTC) - timedelta(days=7))
    return AvatarStats(
        total_avatars=total,
        total_usage=uses,
        created_last_7_days=recent_count,
        by_source_type={"upload": 0, "ai_generated": 0, **await repo.count_by(user_id, Avatar.source_type)},
        by_project=await repo.count_by(user_id, Avatar.project_id),
        recent_uploads=[AvatarOut.of(a, media) for a in await repo.recent(user_id, "upload", 5)],
        top_used=[AvatarOut.of(a, media) for a in await repo.top_used(user_id, 5)],
    )
