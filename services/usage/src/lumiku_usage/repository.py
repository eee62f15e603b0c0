"""SQL of the usage service."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, and_, delete, desc, func, literal, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_usage.models import (
    DEFAULT_PARTITION,
    PARTITION_PREFIX,
    Base,
    KnownAvatar,
    UsageEvent,
    UsageHour,
    UsageTotal,
)

_USE_COLUMNS = (
    "id",
    "created_at",
    "user_id",
    "avatar_id",
    "app_id",
    "app_name",
    "action",
    "reference_id",
    "reference_type",
)
_ADD_USES = text(
    """
    INSERT INTO usage_events (id, created_at, user_id, avatar_id, app_id, app_name, action, reference_id,
                              reference_type, metadata)
    SELECT id, created_at, user_id, avatar_id, app_id, app_name, action, reference_id, reference_type,
           CAST(metadata AS jsonb)
    FROM unnest(CAST(:id AS varchar[]), CAST(:created_at AS timestamptz[]), CAST(:user_id AS varchar[]),
                CAST(:avatar_id AS varchar[]), CAST(:app_id AS varchar[]), CAST(:app_name AS varchar[]),
                CAST(:action AS varchar[]), CAST(:reference_id AS varchar[]), CAST(:reference_type AS varchar[]),
                CAST(:metadata AS text[]))
        AS used(id, created_at, user_id, avatar_id, app_id, app_name, action, reference_id, reference_type, metadata)
    """
)


def _table(model: type[Base]) -> Table:
    """A model's table, for Core statements with many parameter sets."""
    return cast(Table, model.__table__)


class UsageRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    # --- ownership projection -------------------------------------------------------------------------

    async def owners(self, avatar_ids: Sequence[str], lock: bool = False) -> dict[str, KnownAvatar]:
        """The projection's rows; `lock` holds them (shared) so a concurrent deletion waits for this commit."""
        query = select(KnownAvatar).where(KnownAvatar.avatar_id.in_(sorted(set(avatar_ids))))
        if lock:
            query = query.order_by(KnownAvatar.avatar_id).with_for_update(read=True)
        return {a.avatar_id: a for a in (await self.session.scalars(query)).all()}

    async def remember(self, avatar_id: str, user_id: str) -> None:
        """A created (or looked-up) avatar; never revives a tombstone."""
        await self.session.execute(
            insert(KnownAvatar).values(avatar_id=avatar_id, user_id=user_id).on_conflict_do_nothing()
        )

    async def forget(self, avatar_id: str, user_id: str) -> None:
        statement = insert(KnownAvatar).values(avatar_id=avatar_id, user_id=user_id, deleted=True)
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[KnownAvatar.avatar_id], set_={"deleted": True, "updated_at": func.now()}
            )
        )

    # --- writing uses ---------------------------------------------------------------------------------

    async def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows keyed like `UsageEvent`'s attributes. One statement of fixed text for the batch, each column an
        array (asyncpg encodes them in C; a many-parameter-set INSERT processed every value in Python)."""
        columns: dict[str, list[Any]] = {column: [row[column] for row in rows] for column in _USE_COLUMNS}
        columns["metadata"] = [None if row["meta"] is None else json.dumps(row["meta"]) for row in rows]
        await self.session.execute(_ADD_USES, columns)

    async def bump_totals(self, totals: dict[tuple[str, str], tuple[str, int, datetime]]) -> None:
        """Adds counts per (avatar, app); sorted, so concurrent batches lock rows in one order."""
        rows = [
            {"avatar_id": a, "app_id": app, "user_id": u, "uses": n, "last_used_at": last}
            for (a, app), (u, n, last) in sorted(totals.items())
        ]
        statement = insert(_table(UsageTotal))
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[UsageTotal.avatar_id, UsageTotal.app_id],
                set_={
                    "uses": UsageTotal.uses + statement.excluded.uses,
                    "last_used_at": func.greatest(UsageTotal.last_used_at, statement.excluded.last_used_at),
                },
            ),
            rows,
        )

    async def bump_hours(self, hours: dict[tuple[str, datetime, str, str], int]) -> None:
        rows = [
            {"user_id": u, "hour": h, "avatar_id": a, "app_id": app, "uses": n}
            for (u, h, a, app), n in sorted(hours.items())
        ]
        statement = insert(_table(UsageHour))
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[UsageHour.user_id, UsageHour.hour, UsageHour.avatar_id, UsageHour.app_id],
                set_={"uses": UsageHour.uses + statement.excluded.uses},
            ),
            rows,
        )

    async def delete_avatar(self, avatar_id: str) -> int:
        result = await self.session.execute(delete(UsageEvent).where(UsageEvent.avatar_id == avatar_id))
        await self.session.execute(delete(UsageTotal).where(UsageTotal.avatar_id == avatar_id))
        await self.session.execute(delete(UsageHour).where(UsageHour.avatar_id == avatar_id))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # --- reading --------------------------------------------------------------------------------------

    async def page(
        self,
        avatar_id: str,
        limit: int,
        after: tuple[datetime, str] | None,
        app_id: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> list[UsageEvent]:
        """Newest first, keyset: a deep page is the same index range scan as the first."""
        conditions: list[ColumnElement[bool]] = [UsageEvent.avatar_id == avatar_id]
        if after is not None:
            conditions.append(tuple_(UsageEvent.created_at, UsageEvent.id) < tuple_(literal(after[0]), after[1]))
        if app_id is not None:
            conditions.append(UsageEvent.app_id == app_id)
        if since is not None:
            conditions.append(UsageEvent.created_at >= since)
        if until is not None:
            conditions.append(UsageEvent.created_at < until)
        query = (
            select(UsageEvent)
            .where(*conditions)
            .order_by(UsageEvent.created_at.desc(), UsageEvent.id.desc())
            .limit(limit)
        )
        return list((await self.session.scalars(query)).all())

    async def totals(self, avatar_id: str) -> list[UsageTotal]:
        return list((await self.session.scalars(select(UsageTotal).where(UsageTotal.avatar_id == avatar_id))).all())

    def _hours(self, user_id: str, since: datetime, until: datetime, app_id: str | None, avatar_id: str | None) -> Any:
        conditions = [UsageHour.user_id == user_id, UsageHour.hour >= since, UsageHour.hour < until]
        if app_id is not None:
            conditions.append(UsageHour.app_id == app_id)
        if avatar_id is not None:
            conditions.append(UsageHour.avatar_id == avatar_id)
        return and_(*conditions)

    async def series(
        self, user_id: str, unit: str, since: datetime, until: datetime, app_id: str | None, avatar_id: str | None
    ) -> list[tuple[datetime, int]]:
        bucket = func.date_trunc(unit, UsageHour.hour, "UTC").label("bucket")
        query = (
            select(bucket, func.sum(UsageHour.uses))
            .where(self._hours(user_id, since, until, app_id, avatar_id))
            .group_by(bucket)
            .order_by(bucket)
        )
        return [(b, int(n)) for b, n in (await self.session.execute(query)).all()]

    async def by_app(
        self, user_id: str, since: datetime, until: datetime, app_id: str | None, avatar_id: str | None
    ) -> dict[str, int]:
        query = (
            select(UsageHour.app_id, func.sum(UsageHour.uses))
            .where(self._hours(user_id, since, until, app_id, avatar_id))
            .group_by(UsageHour.app_id)
        )
        return {app: int(n) for app, n in (await self.session.execute(query)).all()}

    async def top_avatars(
        self, user_id: str, since: datetime, until: datetime, app_id: str | None, avatar_id: str | None, top: int
    ) -> list[tuple[str, int]]:
        uses = func.sum(UsageHour.uses)
        query = (
            select(UsageHour.avatar_id, uses)
            .where(self._hours(user_id, since, until, app_id, avatar_id))
            .group_by(UsageHour.avatar_id)
            .order_by(desc(uses), UsageHour.avatar_id)
            .limit(top)
        )
        return [(a, int(n)) for a, n in (await self.session.execute(query)).all()]

    def export_query(
        self, user_id: str, since: datetime, until: datetime, app_id: str | None, avatar_id: str | None
    ) -> Select[UsageEvent]:  # type: ignore[type-var]
        conditions = [UsageEvent.user_id == user_id, UsageEvent.created_at >= since, UsageEvent.created_at < until]
        if app_id is not None:
            conditions.append(UsageEvent.app_id == app_id)
        if avatar_id is not None:
            conditions.append(UsageEvent.avatar_id == avatar_id)
        return select(UsageEvent).where(*conditions).order_by(UsageEvent.created_at.desc(), UsageEvent.id.desc())

    # --- partitions -----------------------------------------------------------------------------------

    async def partitions(self) -> list[str]:
        rows = await self.session.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'usage_events'"
            )
        )
        return sorted(rows.scalars())

    async def create_partition(self, name: str, start: datetime, end: datetime) -> None:
        """The month's partition; rows of that month that landed in the default partition move into it, in
        this transaction (attaching a range the default partition holds rows of would fail)."""
        bounds = {"start": start, "end": end}
        await self.session.execute(text(f'CREATE TABLE "{name}" (LIKE usage_events INCLUDING DEFAULTS)'))
        await self.session.execute(
            text(
                f'WITH moved AS (DELETE FROM "{DEFAULT_PARTITION}" WHERE created_at >= :start AND created_at < :end '
                f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved'
            ),
            bounds,
        )
        await self.session.execute(
            text(
                f"ALTER TABLE usage_events ATTACH PARTITION \"{name}\" FOR VALUES FROM ('{start.isoformat()}') "
                f"TO ('{end.isoformat()}')"
            )
        )

    async def drop_partition(self, name: str) -> None:
        await self.session.execute(text(f'ALTER TABLE usage_events DETACH PARTITION "{name}"'))
        await self.session.execute(text(f'DROP TABLE "{name}"'))

    async def purge_before(self, cutoff: datetime) -> None:
        """What retention drops outside whole partitions: old rows of the default partition, old hours."""
        await self.session.execute(
            text(f'DELETE FROM "{DEFAULT_PARTITION}" WHERE created_at < :cutoff'), {"cutoff": cutoff}
        )
        await self.session.execute(delete(UsageHour).where(UsageHour.hour < cutoff))


def partition_name(month_start: datetime) -> str:
    return f"{PARTITION_PREFIX}{month_start:%Y%m}"
