"""Usage use cases on the service's own database. No commits here: the request's (or batch's) unit of work
commits the rows, their rollups and their `usage.recorded` events together."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.clients.avatars import AvatarNotFound
from lumiku_common.ids import new_id
from lumiku_common.logs import get_logger
from lumiku_common.messaging.events import UsageRecorded
from lumiku_common.messaging.outbox import add_events, outbox_row
from lumiku_usage.models import PARTITION_PREFIX, KnownAvatar, UsageEvent
from lumiku_usage.repository import UsageRepository, partition_name
from lumiku_usage.schemas import (
    AvatarUses,
    Bucket,
    Cursor,
    HistoryItem,
    HistoryParams,
    HistoryResponse,
    Summary,
    TrackUsageRequest,
    TrackUsageResponse,
    UsageAnalytics,
    UsageOut,
    UsageQuery,
)

log = get_logger(__name__)


@dataclass
class Use:
    """One use to record, from the HTTP API or an `avatar.used` event."""

    user_id: str
    avatar_id: str
    app_id: str
    app_name: str
    action: str
    reference_id: str | None = None
    reference_type: str | None = None
    metadata: dict[str, Any] | None = None
    used_at: datetime | None = None
    # The correlation context its `usage.recorded` is staged in (a batch mixes messages of many callers).
    context: AbstractContextManager[Any] = field(default_factory=nullcontext)


# --- ownership projection -----------------------------------------------------------------------------


async def owners(session: AsyncSession, avatar_ids: Sequence[str]) -> dict[str, KnownAvatar]:
    return await UsageRepository(session).owners(avatar_ids)


async def remember_avatar(session: AsyncSession, avatar_id: str, user_id: str) -> None:
    await UsageRepository(session).remember(avatar_id, user_id)


async def forget_avatar(session: AsyncSession, avatar_id: str, user_id: str) -> int:
    """`avatar.deleted`: a tombstone, and the avatar's history and rollups are gone (spec: "Also deletes usage
    history"). The tombstone's row lock orders this against any batch recording uses of the avatar."""
    repository = UsageRepository(session)
    await repository.forget(avatar_id, user_id)
    return await repository.delete_avatar(avatar_id)


def owned(known: KnownAvatar | None, user_id: str) -> bool:
    return known is not None and not known.deleted and known.user_id == user_id


# --- recording ----------------------------------------------------------------------------------------


async def record(session: AsyncSession, uses: Sequence[Use]) -> list[dict[str, Any]]:
    """Writes the uses whose avatar (still) belongs to their user, the rollups and one `usage.recorded` each,
    in the caller's transaction; returns the rows written (the others' avatars were deleted meanwhile), as
    plain dicts: a batch of hundreds builds no ORM objects nobody reads."""
    repository = UsageRepository(session)
    known = await repository.owners([u.avatar_id for u in uses], lock=True)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    kept: list[Use] = []
    for use in uses:
        if not owned(known.get(use.avatar_id), use.user_id):
            log.warning("usage_dropped_avatar_gone", avatarId=use.avatar_id)
            continue
        # A use reported for the future is a clock problem of the reporter: it happened when it arrived.
        at = min(use.used_at or now, now)
        rows.append(
            {
                "id": new_id(),
                "created_at": at,
                "user_id": use.user_id,
                "avatar_id": use.avatar_id,
                "app_id": use.app_id,
                "app_name": use.app_name,
                "action": use.action,
                "reference_id": use.reference_id,
                "reference_type": use.reference_type,
                "meta": use.metadata,
            }
        )
        kept.append(use)
    if not rows:
        return []
    await repository.add(rows)
    totals: dict[tuple[str, str], tuple[str, int, datetime]] = {}
    hours: dict[tuple[str, datetime, str, str], int] = {}
    for row in rows:
        key = (row["avatar_id"], row["app_id"])
        _, n, last = totals.get(key, (row["user_id"], 0, row["created_at"]))
        totals[key] = (row["user_id"], n + 1, max(last, row["created_at"]))
        hour = row["created_at"].replace(minute=0, second=0, microsecond=0)
        hour_key = (row["user_id"], hour, row["avatar_id"], row["app_id"])
        hours[hour_key] = hours.get(hour_key, 0) + 1
    await repository.bump_totals(totals)
    await repository.bump_hours(hours)
    await add_events(session, [_recorded(session, row, use) for row, use in zip(rows, kept, strict=True)])
    return rows


def _recorded(session: AsyncSession, row: dict[str, Any], use: Use) -> dict[str, Any]:
    """The `usage.recorded` outbox row of a use, staged in the use's own correlation context."""
    event = UsageRecorded(
        usage_id=row["id"],
        avatar_id=row["avatar_id"],
        app_id=row["app_id"],
        action=row["action"],
        used_at=row["created_at"],
    )
    with use.context:
        return outbox_row(session, event, user_id=row["user_id"], subject=row["avatar_id"])[1]


async def track(session: AsyncSession, user_id: str, body: TrackUsageRequest) -> TrackUsageResponse:
    """One use from the HTTP API; the caller checked the avatar is the user's (a deletion since: 404)."""
    use = Use(
        user_id=user_id,
        avatar_id=body.avatar_id,
        app_id=body.app_id,
        app_name=body.app_name,
        action=body.action,
        reference_id=body.reference_id,
        reference_type=body.reference_type,
        metadata=body.metadata,
    )
    rows = await record(session, [use])
    if not rows:
        raise AvatarNotFound()
    return TrackUsageResponse(usage=UsageOut.model_validate(UsageEvent(**rows[0])))


# --- reading ------------------------------------------------------------------------------------------


async def history(session: AsyncSession, avatar_id: str, params: HistoryParams) -> HistoryResponse:
    """A page of the avatar's history (newest first) and the summary of all of it, from the rollups."""
    repository = UsageRepository(session)
    position = params.position
    rows = await repository.page(
        avatar_id,
        params.limit + 1,
        (position.created_at, position.id) if position else None,
        params.app_id,
        params.from_,
        params.to,
    )
    more = len(rows) > params.limit
    rows = rows[: params.limit]
    totals = await repository.totals(avatar_id)
    return HistoryResponse(
        history=[HistoryItem.model_validate(r) for r in rows],
        summary=Summary(
            total_usage=sum(t.uses for t in totals),
            app_breakdown={t.app_id: t.uses for t in sorted(totals, key=lambda t: (-t.uses, t.app_id))},
            last_used=max((t.last_used_at for t in totals), default=None),
        ),
        next_cursor=Cursor(created_at=rows[-1].created_at, id=rows[-1].id).encode() if more else None,
    )


def window(query: UsageQuery, now: datetime) -> tuple[datetime, datetime]:
    """The query's range in whole hours: `from` rounded down, `to` rounded up."""
    until = query.to or now
    if until.replace(minute=0, second=0, microsecond=0) != until:
        until = until.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    since = (query.from_ or until - timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
    return since, until


async def analytics(session: AsyncSession, user_id: str, query: UsageQuery) -> UsageAnalytics:
    repository = UsageRepository(session)
    since, until = window(query, datetime.now(UTC))
    filters = (query.app_id, query.avatar_id)
    series = await repository.series(user_id, query.granularity, since, until, *filters)
    by_app = await repository.by_app(user_id, since, until, *filters)
    top = await repository.top_avatars(user_id, since, until, *filters, query.top)
    return UsageAnalytics(
        granularity=query.granularity,
        from_=since,
        to=until,
        total=sum(by_app.values()),
        series=[Bucket(start=b, uses=n) for b, n in series],
        by_app=dict(sorted(by_app.items(), key=lambda kv: (-kv[1], kv[0]))),
        top_avatars=[AvatarUses(avatar_id=a, uses=n) for a, n in top],
    )


# --- partitions -----------------------------------------------------------------------------------------


def month_start(moment: datetime, months: int = 0) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def maintain_partitions(
    session: AsyncSession, now: datetime, ahead: int, retention_months: int | None
) -> tuple[list[str], list[str]]:
    """Creates the partitions of this month and the next `ahead`; with retention, drops the partitions of
    months older than `retention_months` before this one. Returns (created, dropped)."""
    repository = UsageRepository(session)
    existing = set(await repository.partitions())
    created, dropped = [], []
    for offset in range(ahead + 1):
        start = month_start(now, offset)
        name = partition_name(start)
        if name not in existing:
            await repository.create_partition(name, start, month_start(now, offset + 1))
            created.append(name)
    if retention_months is not None:
        cutoff = month_start(now, -retention_months)
        for name in sorted(existing):
            if name.startswith(PARTITION_PREFIX) and name < partition_name(cutoff):
                await repository.drop_partition(name)
                dropped.append(name)
        await repository.purge_before(cutoff)
    return created, dropped
