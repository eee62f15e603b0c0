"""avatar.used from the sibling apps, straight to the broker: dedup by envelope id, dead-lettering with the
reason, ownership learnt late, batches with a poison message, and deletion taking the history with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from sqlalchemy import text
from usage_support import APP, Suite, suite_for, used_envelope

from lumiku_common.db import utcnow
from lumiku_common.ids import new_id
from lumiku_common.messaging.events import Envelope
from lumiku_devtools.testing import eventually, publish_raw, read_dlq
from lumiku_usage.handlers import AVATAR_USED
from lumiku_usage.workflows import UsageWorkflows


def dlq(suite: Suite) -> str:
    return f"{suite.settings.queue_prefix}{AVATAR_USED}.dlq"


async def test_the_same_envelope_twice_is_one_row_and_one_count(suite: Suite) -> None:
    user_id, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    body = used_envelope(user_id, avatar_id, referenceId="pose-1")
    for _ in range(3):
        await suite.publish_used(body)
    await suite.counted(alice, avatar_id, 1)
    await asyncio.sleep(0.5)
    assert await suite.rows(avatar_id) == 1
    history = (await suite.history(alice, avatar_id)).json()
    assert [h["referenceId"] for h in history["history"]] == ["pose-1"]
    assert history["summary"]["totalUsage"] == 1


async def test_forged_owner_missing_avatar_and_malformed_are_dead_lettered(suite: Suite) -> None:
    user_id, alice = suite.user()
    mallory, _ = suite.user()
    avatar_id = await suite.avatar(alice)
    cases = [
        (used_envelope(mallory, avatar_id), "does not belong"),
        (used_envelope(user_id, "no-such-avatar"), "not found"),
        (used_envelope(None, avatar_id), "no userId"),
        (b'{"type": "avatar.used", "data": {}}', "poison"),
        (used_envelope(user_id, avatar_id, appId="Not A Slug"), "poison"),
    ]
    for body, reason in cases:
        await suite.publish_used(body)
        message = await read_dlq(suite.settings.amqp_url, dlq(suite))
        assert reason in str(message.headers["x-dead-letter-reason"]), message.headers
        assert message.body == body
    assert await suite.rows(avatar_id) == 0
    assert await suite.usage_count(alice, avatar_id) == 0


async def test_a_batch_with_one_poison_message_records_all_the_others_once(suite: Suite) -> None:
    user_id, alice = suite.user()
    mallory, _ = suite.user()
    avatar_id = await suite.avatar(alice)
    bodies = [used_envelope(user_id, avatar_id, referenceId=f"r{n}") for n in range(40)]
    bodies.insert(17, used_envelope(mallory, avatar_id, referenceId="forged"))
    bodies += bodies[:10]  # redeliveries in the same burst
    await asyncio.gather(*(suite.publish_used(b) for b in bodies))
    await suite.counted(alice, avatar_id, 40)
    message = await read_dlq(suite.settings.amqp_url, dlq(suite))
    assert "does not belong" in str(message.headers["x-dead-letter-reason"])
    await asyncio.sleep(0.5)
    assert await suite.rows(avatar_id) == 40


async def test_deleting_the_avatar_deletes_its_history(suite: Suite) -> None:
    user_id, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    for n in range(3):
        await suite.publish_used(used_envelope(user_id, avatar_id, referenceId=f"r{n}"))
    await suite.counted(alice, avatar_id, 3)
    assert (await suite.api.delete(f"{APP}/avatars/{avatar_id}", headers=alice)).status_code == 200

    async def gone() -> bool:
        return await suite.rows(avatar_id) == 0

    await eventually(gone)
    assert (await suite.history(alice, avatar_id)).status_code == 404
    async with suite.usage_app.state.db.sessions() as session:
        totals = await session.scalar(text("SELECT count(*) FROM usage_totals WHERE avatar_id = :a"), {"a": avatar_id})
    assert totals == 0
    # A late use of the deleted avatar is refused, not counted.
    await suite.publish_used(used_envelope(user_id, avatar_id))
    message = await read_dlq(suite.settings.amqp_url, dlq(suite))
    assert "deleted" in str(message.headers["x-dead-letter-reason"])
    response = await suite.api.post(
        f"{APP}/track-usage",
        json={"avatarId": avatar_id, "appId": "pose-generator", "appName": "Pose", "action": "generate_pose"},
        headers=alice,
    )
    assert response.status_code == 404
    stats = (await suite.api.get(f"{APP}/stats", headers=alice)).json()
    assert stats["stats"]["totalUsage"] == 0  # the deleted avatar's uses are no longer counted


async def test_an_event_before_its_avatar_created_is_recorded_once_the_owner_is_known(tmp_path: Path) -> None:
    """Avatars cannot be asked (down) and the projection has not seen the avatar: the event waits, neither
    lost nor dead-lettered, well past its delivery limit; avatar.created arrives and it is recorded."""
    async with suite_for(
        "usage_late", tmp_path, service_urls={"avatars": "http://127.0.0.1:9"}, usage_max_defer_seconds=0.5
    ) as late:
        # The usage app was given avatars' in-process transport by the suite: take it away (avatars is "down").
        user_id = f"user-{new_id()}"
        avatar_id = new_id()
        workflows: UsageWorkflows = late.usage_app.state.parts[UsageWorkflows]
        workflows.avatars.client.transport = _Unreachable()
        await late.publish_used(used_envelope(user_id, avatar_id, event_id="early-event"))
        await asyncio.sleep(4)  # ~8 attempts at 0.5 s: more than the delivery limit (5)
        assert await late.rows(avatar_id) == 0
        created = Envelope(
            type="avatar.created",
            source="avatars",
            time=utcnow(),
            user_id=user_id,
            subject=avatar_id,
            data={"avatarId": avatar_id, "projectId": "p", "name": "n", "sourceType": "upload"},
        )
        await publish_raw(late.settings, "avatar.created", created.model_dump_json(by_alias=True).encode())

        async def recorded() -> bool:
            return await late.rows(avatar_id) == 1

        await eventually(recorded, timeout=15)


class _Unreachable(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("avatars is down")


async def test_a_nul_in_one_events_avatar_id_dead_letters_only_that_event(suite: Suite) -> None:
    """The ownership check runs for a whole batch at once: an `avatarId` PostgreSQL cannot compare (NUL) failed
    it for every event of the batch, and each was retried until dead-lettered with the poison one."""
    user_id, alice = suite.user()
    avatar_id = await suite.avatar(alice)
    bodies = [used_envelope(user_id, avatar_id, referenceId=f"r{n}") for n in range(20)]
    bodies.insert(7, used_envelope(user_id, "a\x00b", referenceId="nul"))
    await asyncio.gather(*(suite.publish_used(b) for b in bodies))
    message = await read_dlq(suite.settings.amqp_url, dlq(suite))
    assert message.body == bodies[7], message.body
    assert "poison" in str(message.headers["x-dead-letter-reason"]), message.headers
    await suite.counted(alice, avatar_id, 20)
    assert await suite.rows(avatar_id) == 20
