"""credits.capture / credits.release commands over RabbitMQ: exactly-once charging, harmless repeats, DLQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from lumiku_common.clients.credits import capture_command, release_command
from lumiku_common.messaging.events import CaptureCredits, Event, ReleaseCredits, envelope_for
from lumiku_credits.handlers import QUEUE
from lumiku_devtools.testing import eventually, publish_raw, read_dlq


class Commands:
    def __init__(self, credits, db):
        self.credits, self.db = credits, db
        self.settings = credits.settings
        self.queue = f"{self.settings.queue_prefix}{QUEUE}"

    async def send(
        self, command: Event, user: str | None = "alice", event_id: str | None = None, time: datetime | None = None
    ) -> str:
        envelope = envelope_for(
            command,
            source="generation",
            time=time or datetime.now(UTC),
            user_id=user,
            subject=None,
            correlation_id=None,
            causation_id=None,
        )
        if event_id:
            envelope.id = event_id
        await publish_raw(self.settings, command.type, envelope.model_dump_json().encode(), envelope.id)
        return envelope.id

    async def handled(self, count: int) -> None:
        """Waits until `count` commands are committed as handled (the inbox is written with their effects)."""
        query = "SELECT count(*) FROM inbox WHERE consumer = $1"
        await eventually(lambda: self._count(query, count), timeout=10)

    async def _count(self, query: str, expected: int) -> bool:
        return bool(await self.db.fetchval(query, self.queue) >= expected)

    async def dlq_depth(self) -> int:
        connection = await aio_pika.connect(self.settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{self.queue}.dlq", passive=True)
            return int(queue.declaration_result.message_count or 0)

    async def dead_letter(self) -> str:
        message = await read_dlq(self.settings.amqp_url, f"{self.queue}.dlq")
        return str((message.headers or {}).get("x-dead-letter-reason"))


@pytest.fixture
async def commands(credits, db) -> AsyncIterator[Commands]:
    consumer = credits.app.state.workers.consumers[0]
    await eventually(lambda: asyncio.sleep(0, consumer.queue is not None), timeout=10)
    connection = await aio_pika.connect(credits.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await (await channel.declare_queue(f"{consumer.name}.dlq", passive=True)).purge()
    yield Commands(credits, db)


async def usage_entries(db) -> int:
    return int(await db.fetchval("SELECT count(*) FROM ledger_entries WHERE type = 'usage'"))


async def test_capture_command_charges_the_hold(commands, credits, db, spy):
    hold = await credits.hold("alice", 15, "gen-1")
    await commands.send(CaptureCredits(hold_id=hold["id"], idempotency_key=f"capture:{hold['id']}"))
    [captured] = await spy.wait_for("credits.captured")
    assert captured["data"]["holdId"] == hold["id"] and captured["data"]["balance"] == 85
    assert await usage_entries(db) == 1
    assert (await credits.balance("alice"))["balance"] == 85


async def test_redelivered_and_repeated_commands_charge_once(commands, credits, db):
    hold = await credits.hold("alice", 15, "gen-1")
    capture = CaptureCredits(hold_id=hold["id"], amount=12, idempotency_key=f"capture:{hold['id']}")
    event_id = await commands.send(capture)
    await commands.send(capture, event_id=event_id)  # a redelivery: the inbox drops it
    await commands.send(capture)  # the caller staged it twice: the idempotency key replays it
    # Barrier, not a sleep: a later command on the same queue; once it is handled, so is everything before it.
    sentinel = await credits.hold("alice", 5, "sentinel")
    await commands.send(CaptureCredits(hold_id=sentinel["id"], idempotency_key=f"capture:{sentinel['id']}"))
    await commands.handled(3)
    assert await usage_entries(db) == 2  # the repeated capture's one, and the sentinel's
    assert await db.fetchval("SELECT count(*) FROM inbox") == 3
    assert (await credits.balance("alice"))["balance"] == 83
    assert await commands.dlq_depth() == 0


async def test_settling_a_settled_hold_is_a_harmless_no_op(commands, credits, db):
    hold = await credits.hold("alice", 15, "gen-1")
    assert (await credits.capture(hold["id"], "http-capture")).status_code == 200
    await commands.send(ReleaseCredits(hold_id=hold["id"], reason="failed", idempotency_key=f"release:{hold['id']}"))
    await commands.send(CaptureCredits(hold_id=hold["id"], idempotency_key=f"capture:{hold['id']}"))
    expired = await credits.hold("alice", 10, "gen-2")
    await db.execute("UPDATE holds SET expires_at = now() - interval '1 second' WHERE id = $1", expired["id"])
    await commands.send(CaptureCredits(hold_id=expired["id"], idempotency_key=f"capture:{expired['id']}"))
    await commands.handled(3)
    assert await db.fetchval("SELECT status FROM holds WHERE id = $1", hold["id"]) == "captured"
    assert await usage_entries(db) == 1
    assert (await credits.balance("alice"))["balance"] == 85
    # Refused attempts leave no key behind: only the reserves' and the HTTP capture's keys exist.
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 3
    assert await commands.dlq_depth() == 0


async def test_capture_that_arrives_after_expiry_for_work_done_before_it_is_charged(commands, credits, db, spy):
    """The caller committed its work while the hold was active; the command only arrived late (credits down)."""
    hold = await credits.hold("alice", 15, "gen-1")
    work_done = datetime.now(UTC)
    await db.execute("UPDATE holds SET expires_at = now() - interval '1 second' WHERE id = $1", hold["id"])
    capture = CaptureCredits(hold_id=hold["id"], idempotency_key=f"capture:{hold['id']}")
    await commands.send(capture, time=work_done - timedelta(seconds=5))
    [captured] = await spy.wait_for("credits.captured")
    assert captured["data"]["holdId"] == hold["id"] and captured["data"]["balance"] == 85
    assert await usage_entries(db) == 1
    assert await db.fetchval("SELECT status FROM holds WHERE id = $1", hold["id"]) == "captured"


async def test_late_capture_the_credits_no_longer_cover_is_dead_lettered(commands, credits, db):
    hold = await credits.hold("alice", 60, "gen-1")
    await db.execute("UPDATE holds SET expires_at = now() - interval '1 second' WHERE id = $1", hold["id"])
    await credits.hold("alice", 60, "gen-2")  # the expired hold's credits were promised again
    capture = CaptureCredits(hold_id=hold["id"], idempotency_key=f"capture:{hold['id']}")
    await commands.send(capture, time=datetime.now(UTC) - timedelta(minutes=10))
    assert "promised elsewhere" in await commands.dead_letter()
    assert await usage_entries(db) == 0
    balance = await credits.balance("alice")
    assert (balance["balance"], balance["available"]) == (100, 40)


@pytest.mark.parametrize(
    ("command", "user", "reason"),
    [
        (CaptureCredits(hold_id="no-such-hold", idempotency_key="k"), "alice", "Hold not found"),
        (CaptureCredits(hold_id="HOLD", idempotency_key="k"), "mallory", "Hold not found"),
        (CaptureCredits(hold_id="HOLD", amount=16, idempotency_key="k"), "alice", "exceeds"),
        (CaptureCredits(hold_id="HOLD", amount=0, idempotency_key="k"), "alice", "invalid command"),
        (ReleaseCredits(hold_id="HOLD", reason="", idempotency_key="k"), "alice", "invalid command"),
    ],
)
async def test_commands_that_can_never_succeed_are_dead_lettered_at_once(commands, credits, db, command, user, reason):
    hold = await credits.hold("alice", 15, "gen-1")
    if command.hold_id == "HOLD":
        command = command.model_copy(update={"hold_id": hold["id"]})
    await commands.send(command, user=user)
    assert reason in await commands.dead_letter()
    assert await db.fetchval("SELECT count(*) FROM inbox") == 0
    assert await db.fetchval("SELECT status FROM holds WHERE id = $1", hold["id"]) == "active"
    assert await usage_entries(db) == 0


@pytest.mark.parametrize("amount", ['"15"', "true", "15.0"])
async def test_capture_with_a_loosely_typed_amount_is_dead_lettered(commands, credits, db, amount):
    hold = await credits.hold("alice", 15, "gen-1")
    body = envelope_for(
        CaptureCredits(hold_id=hold["id"], amount=15, idempotency_key="k"),
        source="generation",
        time=datetime.now(UTC),
        user_id="alice",
        subject=None,
        correlation_id=None,
        causation_id=None,
    ).model_dump_json()
    await publish_raw(credits.settings, "credits.capture", body.replace('"amount":15', f'"amount":{amount}').encode())
    assert "poison" in await commands.dead_letter()
    assert await usage_entries(db) == 0


async def test_reusing_a_key_for_another_capture_is_dead_lettered(commands, credits, db):
    first, second = await credits.hold("alice", 15, "gen-1"), await credits.hold("alice", 15, "gen-2")
    await commands.send(CaptureCredits(hold_id=first["id"], idempotency_key="shared"))
    await commands.handled(1)
    await commands.send(CaptureCredits(hold_id=second["id"], idempotency_key="shared"))
    assert "Idempotency key already used" in await commands.dead_letter()
    assert await usage_entries(db) == 1


async def test_commands_staged_in_a_callers_outbox_settle_after_its_commit(commands, credits, db, spy):
    """The shared client helpers: a command exists only if the caller's transaction committed."""
    charged, failed, abandoned = [await credits.hold("alice", 15, f"gen-{i}") for i in range(3)]
    caller = credits.app.state.db  # any database with an outbox and a relay will do
    async with caller.unit_of_work() as session:
        await capture_command(session, "alice", charged["id"])
        await release_command(session, "alice", failed["id"], "provider failed")
    with pytest.raises(RuntimeError):
        async with caller.unit_of_work() as session:
            await capture_command(session, "alice", abandoned["id"])
            raise RuntimeError("the caller crashed before committing its work")
    await spy.wait_for("credits.captured")
    await spy.wait_for("credits.released")
    await commands.handled(2)
    statuses = dict(await db.fetch("SELECT id, status FROM holds"))
    assert [statuses[h["id"]] for h in (charged, failed, abandoned)] == ["captured", "released", "active"]
    assert (await credits.balance("alice"))["balance"] == 85
