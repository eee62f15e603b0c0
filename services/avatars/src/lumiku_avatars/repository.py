from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import pydantic_core
from asyncpg import Record
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    String,
    Table,
    any_,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from lumiku_avatars.models import (
    Avatar,
    CountedUsage,
    DeletedGeneratedAvatar,
    DeletedProject,
    GivenUpImage,
    ObjectDeletion,
)
from lumiku_avatars.schemas import AvatarFilters
from lumiku_common.db import Database, Query, lock_name

_NEWEST = (Avatar.created_at.desc(), Avatar.id.desc())
_IDS = ARRAY(String)

# Events can arrive out of order: the latest use wins. A null user (an old event) skips the owner check.
_COUNT_USES = text(
    """
    UPDATE avatars AS a
    SET usage_count = a.usage_count + v.n,
        last_used_at = greatest(coalesce(a.last_used_at, v.last), v.last)
    FROM unnest(CAST(:ids AS varchar[]), CAST(:users AS varchar[]), CAST(:ns AS int[]), CAST(:lasts AS timestamptz[]))
        AS v(id, user_id, n, last)
    WHERE a.id = v.id AND (v.user_id IS NULL OR a.user_id = v.user_id)
    """
)


@dataclass(frozen=True)
class CountedUse:
    usage_id: str
    avatar_id: str
    used_at: datetime
    user_id: str | None


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _conditions(user_id: str, filters: AvatarFilters) -> list[ColumnElement[bool]]:
    conditions = [Avatar.user_id == user_id]
    for column, value in (
        (Avatar.project_id, filters.project_id),
        (Avatar.gender, filters.gender),
        (Avatar.age_range, filters.age_range),
        (Avatar.style, filters.style),
        (Avatar.source_type, filters.source_type),
    ):
        if value is not None:
            conditions.append(column == value)
    if filters.search and filters.search.strip():
        conditions.append(Avatar.name.ilike(_like(filters.search.strip()), escape="\\"))
    return conditions


_COLUMNS = cast(Table, Avatar.__table__).columns
_DATETIMES = frozenset(c.key for c in _COLUMNS if isinstance(c.type, DateTime))


def _snapshot(avatar: Avatar) -> dict[str, Any]:
    return cast(dict[str, Any], pydantic_core.to_jsonable_python({c.key: getattr(avatar, c.key) for c in _COLUMNS}))


def _revived(snapshot: dict[str, Any]) -> Avatar:
    return Avatar(**{k: datetime.fromisoformat(v) if k in _DATETIMES and v else v for k, v in snapshot.items()})


class AvatarRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def get(self, user_id: str, avatar_id: str, for_update: bool = False) -> Avatar | None:
        query = select(Avatar).where(Avatar.id == avatar_id, Avatar.user_id == user_id)
        result = await self.session.execute(query.with_for_update() if for_update else query)
        return result.scalar_one_or_none()

    async def by_id(self, avatar_id: str) -> Avatar | None:
        return await self.session.scalar(select(Avatar).where(Avatar.id == avatar_id))

    async def add(self, avatar: Avatar) -> Avatar:
        self.session.add(avatar)
        await self.session.flush()
        return avatar

    async def page(self, user_id: str, filters: AvatarFilters, offset: int, limit: int) -> tuple[list[Avatar], int]:
        conditions = _conditions(user_id, filters)
        query = select(Avatar).where(*conditions).order_by(*_NEWEST).offset(offset).limit(limit)
        rows = await self.session.execute(query)
        total = await self.session.scalar(select(func.count()).select_from(Avatar).where(*conditions))
        return list(rows.scalars()), int(total or 0)

    async def delete(self, avatar: Avatar) -> None:
        await self.session.execute(delete(Avatar).where(Avatar.id == avatar.id))

    async def lock_project(self, project_id: str) -> None:
        """Serialises avatar inserts into a project with that project's cascade (until the transaction ends)."""
        await lock_name(self.session, f"project:{project_id}")

    async def project_deleted(self, project_id: str) -> bool:
        found = await self.session.scalar(
            select(DeletedProject.project_id).where(DeletedProject.project_id == project_id)
        )
        return found is not None

    async def image_given_up(self, image_id: str) -> bool:
        found = await self.session.scalar(select(GivenUpImage.image_id).where(GivenUpImage.image_id == image_id))
        return found is not None

    async def give_up_image(self, image_id: str) -> None:
        await self.session.execute(insert(GivenUpImage).values(image_id=image_id).on_conflict_do_nothing())

    async def remember_deleted_generated(self, avatars: Sequence[Avatar]) -> None:
        rows = [
            {"avatar_id": a.id, "user_id": a.user_id, "avatar": _snapshot(a)}
            for a in avatars
            if a.source_type == "ai_generated"
        ]
        if rows:
            await self.session.execute(insert(DeletedGeneratedAvatar).on_conflict_do_nothing(), rows)

    async def deleted_generated(self, user_id: str, avatar_id: str) -> Avatar | None:
        """The AI avatar as it was when it was deleted (`remember_deleted_generated`), not attached to the session."""
        snapshot = await self.session.scalar(
            select(DeletedGeneratedAvatar.avatar).where(
                DeletedGeneratedAvatar.avatar_id == avatar_id, DeletedGeneratedAvatar.user_id == user_id
            )
        )
        return None if snapshot is None else _revived(snapshot)

    async def mark_project_deleted(self, project_id: str) -> None:
        await self.session.execute(insert(DeletedProject).values(project_id=project_id).on_conflict_do_nothing())

    async def delete_project(self, project_id: str, user_id: str | None) -> list[Avatar]:
        statement = delete(Avatar).where(Avatar.project_id == project_id)
        if user_id is not None:
            statement = statement.where(Avatar.user_id == user_id)
        rows = await self.session.execute(statement.returning(Avatar))
        return list(rows.scalars())

    async def count_usages(self, usages: Sequence[CountedUse]) -> int:
        """Counts each use once per usage id (a batch, in one go); returns how many were new and counted.
        A use whose avatar is gone, or belongs to another user than the event said, counts nothing."""
        unique = sorted({u.usage_id: u for u in usages}.values(), key=lambda u: u.usage_id)
        if not unique:
            return 0
        # Many parameter sets: one multi-row INSERT from a cached compilation (`.values(rows)` recompiles).
        claimed = await self.session.execute(
            insert(cast(Table, CountedUsage.__table__)).on_conflict_do_nothing().returning(CountedUsage.usage_id),
            [{"usage_id": u.usage_id, "avatar_id": u.avatar_id} for u in unique],
        )
        fresh = set(claimed.scalars())
        per_avatar: dict[tuple[str, str | None], tuple[int, datetime]] = {}
        for use in unique:
            if use.usage_id in fresh:
                n, last = per_avatar.get((use.avatar_id, use.user_id), (0, use.used_at))
                per_avatar[(use.avatar_id, use.user_id)] = (n + 1, max(last, use.used_at))
        if not per_avatar:
            return 0
        keys = sorted(per_avatar, key=lambda k: (k[0], k[1] or ""))
        # Row locks in one order, so concurrent batches wait for each other instead of deadlocking.
        await self.session.execute(
            select(Avatar.id).where(Avatar.id.in_({k[0] for k in keys})).order_by(Avatar.id).with_for_update()
        )
        await self.session.execute(
            _COUNT_USES,
            {
                "ids": [k[0] for k in keys],
                "users": [k[1] for k in keys],
                "ns": [per_avatar[k][0] for k in keys],
                "lasts": [per_avatar[k][1] for k in keys],
            },
        )
        return len(fresh)

    async def totals(self, user_id: str, since: datetime) -> tuple[int, int, int]:
        """(avatars, uses, avatars created since `since`)."""
        row = (
            await self.session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(Avatar.usage_count), 0),
                    func.count().filter(Avatar.created_at >= since),
                ).where(Avatar.user_id == user_id)
            )
        ).one()
        return int(row[0]), int(row[1]), int(row[2])

    async def count_by(self, user_id: str, column: InstrumentedAttribute[str]) -> dict[str, int]:
        rows = await self.session.execute(
            select(column, func.count()).where(Avatar.user_id == user_id).group_by(column)
        )
        return {str(key): int(n) for key, n in rows.all()}

    async def recent(self, user_id: str, source_type: str, limit: int) -> list[Avatar]:
        rows = await self.session.execute(
            select(Avatar)
            .where(Avatar.user_id == user_id, Avatar.source_type == source_type)
            .order_by(*_NEWEST)
            .limit(limit)
        )
        return list(rows.scalars())

    async def top_used(self, user_id: str, limit: int) -> list[Avatar]:
        rows = await self.session.execute(
            select(Avatar)
            .where(Avatar.user_id == user_id, Avatar.usage_count > 0)
            .order_by(Avatar.usage_count.desc(), Avatar.last_used_at.desc().nulls_last(), Avatar.id)
            .limit(limit)
        )
        return list(rows.scalars())

    async def referenced_keys(self, keys: Sequence[str]) -> set[str]:
        rows = await self.session.execute(
            select(Avatar.base_image_key, Avatar.thumbnail_key).where(
                (Avatar.base_image_key.in_(keys)) | (Avatar.thumbnail_key.in_(keys))
            )
        )
        return {key for row in rows for key in row if key is not None}

    async def exists(self, avatar_id: str) -> bool:
        return await self.session.scalar(select(func.count()).where(Avatar.id == avatar_id)) == 1


class ObjectDeletionRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def request(self, keys: Sequence[str]) -> None:
        if keys:
            await self.session.execute(
                insert(ObjectDeletion).values([{"key": k} for k in keys]).on_conflict_do_nothing()
            )

    async def claim(self, limit: int) -> list[str]:
        rows = await self.session.execute(
            select(ObjectDeletion.key)
            .order_by(ObjectDeletion.requested_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(rows.scalars())

    async def done(self, keys: Sequence[str]) -> None:
        await self.session.execute(delete(ObjectDeletion).where(ObjectDeletion.key.in_(keys)))

    async def postpone(self, keys: Sequence[str]) -> None:
        """Sends keys the store refused to the back of the queue, so they cannot starve the others."""
        await self.session.execute(
            update(ObjectDeletion).where(ObjectDeletion.key.in_(keys)).values(requested_at=func.now())
        )


_AVATARS = cast(Table, Avatar.__table__)
_ONE = Query(select(_AVATARS).where(Avatar.id == bindparam("avatar_id"), Avatar.user_id == bindparam("user_id")))
_RANKED = (
    select(Avatar.id, func.row_number().over(partition_by=Avatar.project_id, order_by=_NEWEST).label("rank"))
    .where(Avatar.user_id == bindparam("user_id"), Avatar.project_id == any_(bindparam("project_ids", type_=_IDS)))
    .subquery()
)
_NEWEST_PER_PROJECT = Query(
    select(_AVATARS)
    .join(_RANKED, _RANKED.c.id == Avatar.id)
    .where(_RANKED.c.rank <= bindparam("per_project"))
    .order_by(Avatar.project_id, *_NEWEST)
)


class AvatarReads:
    """Hot reads as asyncpg records of the avatars table (`AvatarOut.of` takes them): compiled once, no ORM
    objects built only to be serialised, and no transaction (see lumiku_common.db)."""

    def __init__(self, db: Database):
        self.db = db

    async def get(self, user_id: str, avatar_id: str) -> Record | None:
        return await self.db.fetchrow(_ONE, user_id=user_id, avatar_id=avatar_id)

    async def newest_per_project(self, user_id: str, project_ids: Sequence[str], per_project: int) -> list[Record]:
        return await self.db.fetch(
            _NEWEST_PER_PROJECT, user_id=user_id, project_ids=list(project_ids), per_project=per_project
        )
