"""Month partitions: a month's rows that arrived before its partition existed move into it when it is created,
and retention (USAGE_RETENTION_MONTHS) drops whole months instead of deleting rows."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from usage_support import Suite

from lumiku_common.db import Database
from lumiku_common.ids import new_id
from lumiku_usage import service
from lumiku_usage.repository import UsageRepository

# Months long before any other test's rows, so creating and dropping them touches nobody else's.
JAN, FEB, MAR = "usage_events_p201901", "usage_events_p201902", "usage_events_p201903"


async def placement(db: Database, avatar_id: str) -> dict[str, int]:
    async with db.sessions() as session:
        rows = await session.execute(
            text("SELECT tableoid::regclass::text, count(*) FROM usage_events WHERE avatar_id = :a GROUP BY 1"),
            {"a": avatar_id},
        )
    return {name: n for name, n in rows}


async def test_a_month_gets_its_partition_and_retention_drops_whole_months(suite: Suite) -> None:
    db: Database = suite.usage_app.state.db
    avatar_id = new_id()
    async with db.unit_of_work() as session:
        for at in (
            datetime(2019, 1, 3, tzinfo=UTC),
            datetime(2019, 1, 20, tzinfo=UTC),
            datetime(2019, 2, 5, tzinfo=UTC),
        ):
            await session.execute(
                text(
                    "INSERT INTO usage_events (id, created_at, user_id, avatar_id, app_id, app_name, action) "
                    "VALUES (:id, :at, 'user-partitions', :a, 'pose-generator', 'Pose', 'use')"
                ),
                {"id": new_id(), "at": at, "a": avatar_id},
            )
    assert await placement(db, avatar_id) == {"usage_events_default": 3}
    try:
        async with db.unit_of_work() as session:
            created, dropped = await service.maintain_partitions(session, datetime(2019, 1, 15, tzinfo=UTC), 1, None)
        assert (created, dropped) == ([JAN, FEB], [])
        assert await placement(db, avatar_id) == {JAN: 2, FEB: 1}  # moved out of the default partition

        # March, keeping one month besides the current one: February stays, January goes as a whole.
        async with db.unit_of_work() as session:
            created, dropped = await service.maintain_partitions(session, datetime(2019, 3, 10, tzinfo=UTC), 0, 1)
        assert (created, dropped) == ([MAR], [JAN])
        assert await placement(db, avatar_id) == {FEB: 1}
        async with db.sessions() as session:
            remaining = set(await UsageRepository(session).partitions())
        assert JAN not in remaining and {FEB, MAR} <= remaining
        assert any(name > MAR for name in remaining)  # this month's and the next ones are untouched
    finally:
        async with db.unit_of_work() as session:
            repository = UsageRepository(session)
            for name in await repository.partitions():
                if name in (JAN, FEB, MAR):
                    await repository.drop_partition(name)
