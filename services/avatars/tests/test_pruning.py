"""What avatars keeps only for a while: an Idempotency-Key's record (a week), and the tombstones of given-up
images and deleted projects (two weeks, far past any credit hold they guard), pruned by the service's runtime."""

from __future__ import annotations

from avatars_samples import jpeg
from sqlalchemy import text

from lumiku_common.idempotency import user_scoped
from lumiku_common.ids import new_id


async def aged(suite, statement: str, **values: str) -> None:
    async with suite.avatars_app.state.db.unit_of_work() as session:
        await session.execute(text(statement), values)


async def test_a_key_past_its_week_is_pruned_and_its_retry_runs_again(suite):
    user, headers = suite.user()
    project = await suite.project(headers)
    keyed = {**headers, "Idempotency-Key": "long-ago"}
    first = await suite.upload(keyed, project, jpeg())
    assert first.status_code == 201
    await aged(
        suite,
        "UPDATE idempotency_keys SET created_at = now() - interval '7 days 1 minute' WHERE key = :k",
        k=user_scoped(user, "long-ago"),
    )
    await suite.avatars_app.state.workers.prune()
    again = await suite.upload(keyed, project, jpeg())
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.json()["avatar"]["id"] != first.json()["avatar"]["id"]
    assert await suite.rows(user) == 2


async def test_tombstones_older_than_two_weeks_are_pruned_and_younger_ones_kept(suite):
    old, young = new_id(), new_id()
    for table, column in (("given_up_images", "image_id"), ("deleted_projects", "project_id")):
        stamp = "given_up_at" if table == "given_up_images" else "deleted_at"
        await aged(
            suite,
            f"INSERT INTO {table} ({column}, {stamp}) VALUES "
            f"(:old, now() - interval '14 days 1 minute'), (:young, now() - interval '13 days')",
            old=old,
            young=young,
        )
    await suite.avatars_app.state.workers.prune()
    async with suite.avatars_app.state.db.sessions() as session:
        for table, column in (("given_up_images", "image_id"), ("deleted_projects", "project_id")):
            found = await session.scalars(
                text(f"SELECT {column} FROM {table} WHERE {column} IN (:old, :young)"), {"old": old, "young": young}
            )
            assert list(found) == [young], table
