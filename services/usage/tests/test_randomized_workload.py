"""Counters and history agree whatever is retried, redelivered or killed: a seeded random workload (track-usage
with Idempotency-Key replays, avatar.used with duplicate envelopes and late republishes, avatar deletions)
against the suite as real processes, while the usage worker (`python -m lumiku_common.worker usage`: its
consumers and outbox relay) is SIGKILLed mid-flight and restarted. Then, from the databases: every accepted
use is one row, each accepted event id is in the inbox, avatars counted each row once, the rollups are the
history, deleted avatars left nothing, and only uses of deleted avatars were dead-lettered.

    USAGE_WORKLOAD_SEED=1234 uv run pytest services/usage/tests/test_randomized_workload.py  # replay a seed
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from usage_support import APP, jpeg

from lumiku_common.ids import new_id
from lumiku_common.messaging.events import Envelope
from lumiku_common.settings import ServiceSettings
from lumiku_devtools.processes import Process, RealSuite, real_suite
from lumiku_devtools.testing import auth, eventually
from lumiku_usage.handlers import AVATAR_USED

USERS, AVATARS_EACH, DELETIONS, KILLS, STEPS = 3, 3, 2, 3, 360
APPS = ("pose-generator", "poster-editor", "carousel-mix")


@dataclass
class Avatar:
    user_id: str
    headers: dict[str, str]
    id: str
    deleted: bool = False
    expected: set[str] = field(default_factory=set)  # tags (referenceId) of the uses accepted for it


@dataclass
class Workload:
    """What the run did, by the avatar each use was for."""

    rng: random.Random
    api: httpx.AsyncClient
    exchange: aio_pika.abc.AbstractExchange
    avatars: list[Avatar]
    published: list[tuple[Avatar, str, bytes]] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)  # accepted envelopes of surviving avatars (after the run)

    async def publish(self, event_id: str, body: bytes) -> None:
        message = aio_pika.Message(body, message_id=event_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self.exchange.publish(message, "avatar.used")

    async def event(self, avatar: Avatar, tag: str, twice: bool, used_at: datetime) -> None:
        envelope = Envelope(
            type="avatar.used",
            source="pose-generator",
            time=datetime.now(UTC),
            user_id=avatar.user_id,
            data={
                "avatarId": avatar.id,
                "appId": self.rng.choice(APPS),
                "appName": "Sibling app",
                "action": "generate_pose",
                "referenceId": tag,
                "usedAt": used_at.isoformat(),
            },
        )
        body = envelope.model_dump_json(by_alias=True).encode()
        self.published.append((avatar, envelope.id, body))
        avatar.expected.add(tag)
        await self.publish(envelope.id, body)
        if twice:
            await self.publish(envelope.id, body)

    async def track(self, avatar: Avatar, tag: str, replay: bool) -> None:
        body = {"avatarId": avatar.id, "appId": self.rng.choice(APPS), "appName": "App", "action": "use"}
        headers = {**avatar.headers, "Idempotency-Key": f"key-{tag}"}
        body["referenceId"] = tag
        first = await self.api.post(f"{APP}/track-usage", json=body, headers=headers)
        if avatar.deleted:
            assert first.status_code in (201, 404), first.text  # 201 while usage has not heard of it yet
            return
        assert first.status_code == 201, first.text
        avatar.expected.add(tag)
        if replay:
            again = await self.api.post(f"{APP}/track-usage", json=body, headers=headers)
            assert (again.status_code, again.headers.get("idempotent-replayed")) == (201, "true"), again.text
            assert again.json() == first.json()

    async def delete(self, avatar: Avatar) -> None:
        avatar.deleted = True
        response = await self.api.delete(f"{APP}/avatars/{avatar.id}", headers=avatar.headers)
        assert response.status_code == 200, response.text

    def step(self, n: int) -> Any:
        """One random operation (a coroutine); deleted avatars still get a few late uses."""
        rng = self.rng
        alive = [a for a in self.avatars if not a.deleted]
        gone = [a for a in self.avatars if a.deleted]
        avatar = rng.choice(gone) if gone and rng.random() < 0.1 else rng.choice(alive)
        tag = f"use-{n}"
        roll = rng.random()
        if roll < 0.3:
            return self.track(avatar, tag, replay=rng.random() < 0.3)
        if roll < 0.4 and self.published:
            _, event_id, body = rng.choice(self.published)  # a late redelivery of an old envelope
            return self.publish(event_id, body)
        used_at = datetime.now(UTC) - timedelta(minutes=rng.randrange(0, 3 * 24 * 60))
        return self.event(avatar, tag, twice=rng.random() < 0.2, used_at=used_at)


@pytest.fixture(scope="module")
async def chaos_suite() -> AsyncIterator[RealSuite]:
    usage = {"RUN_WORKERS": "false", "USAGE_BATCH_SIZE": "20"}  # the API alone; small batches, more of them
    async with real_suite(("projects", "credits", "avatars", "usage"), "usagechaos", {"usage": usage}) as suite:
        yield suite


async def test_counters_equal_history_after_a_random_workload_with_a_killed_worker(chaos_suite: RealSuite) -> None:
    seed = int(os.environ.get("USAGE_WORKLOAD_SEED") or random.randrange(2**32))
    print(f"USAGE_WORKLOAD_SEED={seed}")
    try:
        await _run(chaos_suite, seed)
    except BaseException as exc:
        raise AssertionError(f"randomized workload failed with USAGE_WORKLOAD_SEED={seed}: {exc!r}") from exc


async def _run(suite: RealSuite, seed: int) -> None:
    rng = random.Random(seed)
    worker = suite.worker("usage")
    worker.start()
    await worker.wait_ready()  # its queues exist from now on
    gateway = f"http://127.0.0.1:{suite.gateway.port}"
    usage_settings = suite.settings["usage"]
    connection = await aio_pika.connect(usage_settings.amqp_url)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as api, connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            usage_settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        avatars = await _avatars(api, usage_settings)
        work = Workload(rng, api, exchange, avatars)
        doomed = set(rng.sample(range(STEPS), DELETIONS))
        killer = asyncio.create_task(_kill_and_restart(worker, random.Random(seed + 1)))
        try:
            n = 0
            while n < STEPS or not killer.done():  # the kills land while uses are in flight
                burst = [work.step(n + i) for i in range(rng.randrange(5, 25))]
                deletions = [work.delete(a) for i in range(len(burst)) if n + i in doomed for a in _doom_one(work)]
                await asyncio.gather(*burst, *deletions)
                n += len(burst)
                await asyncio.sleep(rng.uniform(0, 0.1))
            await killer
        finally:
            # A failed step must not leave the killer running: it would start the worker again after the suite
            # stopped it, a stray process consuming this namespace's queues.
            killer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await killer
        surviving = [a for a in avatars if not a.deleted]
        work.event_ids = {eid for a, eid, _ in work.published if not a.deleted}
        await _settled(suite, surviving)
        await asyncio.sleep(1)  # anything late (a duplicate) would show now
        await _check(suite, work, seed)


def _doom_one(work: Workload) -> list[Avatar]:
    """An avatar to delete, marked deleted as it is chosen: two deletions in one burst are built before either
    runs, and must not pick the same avatar (the second DELETE would rightly be 404)."""
    alive = [a for a in work.avatars if not a.deleted]
    if len(alive) < 2:
        return []
    doomed = work.rng.choice(alive)
    doomed.deleted = True
    return [doomed]


async def _avatars(api: httpx.AsyncClient, settings: ServiceSettings) -> list[Avatar]:
    avatars = []
    for _ in range(USERS):
        user_id = f"user-{new_id()}"
        headers = auth(settings, user_id)
        project = await api.post(f"{APP}/projects", json={"name": "Chaos"}, headers=headers)
        assert project.status_code == 201, project.text
        for _ in range(AVATARS_EACH):
            response = await api.post(
                f"{APP}/projects/{project.json()['project']['id']}/avatars",
                data={"name": "Chaos"},
                files={"image": ("a.jpg", jpeg(), "image/jpeg")},
                headers=headers,
            )
            assert response.status_code == 201, response.text
            avatars.append(Avatar(user_id, headers, response.json()["avatar"]["id"]))
    return avatars


async def _kill_and_restart(worker: Process, rng: random.Random) -> None:
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        worker.stop()  # SIGKILL: mid-batch, mid-commit or between commit and ack
        await asyncio.sleep(rng.uniform(0, 0.5))
        worker.start()
        await worker.wait_ready()


def _dsn(settings: ServiceSettings) -> str:
    return settings.database_url.replace("postgresql+asyncpg", "postgresql")


async def _settled(suite: RealSuite, surviving: list[Avatar]) -> None:
    usage = await asyncpg.connect(_dsn(suite.settings["usage"]))
    avatars = await asyncpg.connect(_dsn(suite.settings["avatars"]))
    ids = [a.id for a in surviving]
    want = {a.id: len(a.expected) for a in surviving}
    try:

        async def converged() -> bool:
            rows = dict(
                await usage.fetch(
                    "SELECT avatar_id, count(*) FROM usage_events WHERE avatar_id = ANY($1) GROUP BY 1", ids
                )
            )
            counts = dict(await avatars.fetch("SELECT id, usage_count FROM avatars WHERE id = ANY($1)", ids))
            return all(rows.get(a, 0) >= n and counts.get(a, 0) >= n for a, n in want.items())

        await eventually(converged, timeout=90, interval=0.2, what="every accepted use recorded and counted")
    finally:
        await usage.close()
        await avatars.close()


async def _check(suite: RealSuite, work: Workload, seed: int) -> None:
    usage_settings, avatars_settings = suite.settings["usage"], suite.settings["avatars"]
    usage = await asyncpg.connect(_dsn(usage_settings))
    avatars = await asyncpg.connect(_dsn(avatars_settings))
    all_ids = [a.id for a in work.avatars]
    try:
        rows = await usage.fetch(
            "SELECT id, avatar_id, user_id, app_id, reference_id, created_at FROM usage_events "
            "WHERE avatar_id = ANY($1)",
            all_ids,
        )
        totals = await usage.fetch("SELECT * FROM usage_totals WHERE avatar_id = ANY($1)", all_ids)
        hours = await usage.fetch("SELECT * FROM usage_hours WHERE avatar_id = ANY($1)", all_ids)
        inbox = {
            r["event_id"]
            for r in await usage.fetch(
                "SELECT event_id FROM inbox WHERE consumer = $1",
                f"{usage_settings.queue_prefix}{AVATAR_USED}",
            )
        }
        counters = {r["id"]: r for r in await avatars.fetch("SELECT * FROM avatars WHERE id = ANY($1)", all_ids)}
        counted = Counter(
            r["avatar_id"]
            for r in await avatars.fetch("SELECT avatar_id FROM counted_usages WHERE avatar_id = ANY($1)", all_ids)
        )
    finally:
        await usage.close()
        await avatars.close()

    context = f"seed {seed}"
    for avatar in work.avatars:
        mine = [r for r in rows if r["avatar_id"] == avatar.id]
        if avatar.deleted:
            assert not mine and avatar.id not in counters, f"{context}: deleted avatar {avatar.id} left rows"
            assert not [t for t in totals if t["avatar_id"] == avatar.id], f"{context}: rollups of a deleted avatar"
            assert not [h for h in hours if h["avatar_id"] == avatar.id], f"{context}: hours of a deleted avatar"
            continue
        tags = Counter(r["reference_id"] for r in mine)
        assert set(tags) == avatar.expected, (
            f"{context}: lost {avatar.expected - set(tags)}, extra {set(tags) - avatar.expected}"
        )
        assert max(tags.values(), default=1) == 1, f"{context}: duplicated {[t for t, n in tags.items() if n > 1]}"
        counter = counters[avatar.id]
        assert counter["usage_count"] == len(mine) == counted[avatar.id], f"{context}: counter of {avatar.id}"
        latest = max((r["created_at"] for r in mine), default=None)
        # Events carry times in milliseconds (the envelope's JSON format): the counter's copy is truncated.
        assert counter["last_used_at"] == (latest and latest.replace(microsecond=latest.microsecond // 1000 * 1000)), (
            context
        )
        _check_rollups(avatar, mine, totals, hours, context)
    assert work.event_ids <= inbox, f"{context}: accepted events missing from the inbox"
    await _only_deleted_dead_lettered(usage_settings, {a.id for a in work.avatars if a.deleted}, context)


def _check_rollups(avatar: Avatar, mine: list[Any], totals: list[Any], hours: list[Any], context: str) -> None:
    by_app = Counter(r["app_id"] for r in mine)
    rollup = {t["app_id"]: t for t in totals if t["avatar_id"] == avatar.id}
    assert {app: t["uses"] for app, t in rollup.items()} == dict(by_app), f"{context}: totals of {avatar.id}"
    for app, total in rollup.items():
        assert total["last_used_at"] == max(r["created_at"] for r in mine if r["app_id"] == app), context
    by_hour = Counter(
        (r["user_id"], r["created_at"].replace(minute=0, second=0, microsecond=0), r["app_id"]) for r in mine
    )
    hourly = {(h["user_id"], h["hour"], h["app_id"]): h["uses"] for h in hours if h["avatar_id"] == avatar.id}
    assert hourly == dict(by_hour), f"{context}: hourly rollups of {avatar.id}"


async def _only_deleted_dead_lettered(settings: ServiceSettings, deleted: set[str], context: str) -> None:
    """Nothing lost to the dead-letter queue: the only refusals are uses of avatars deleted meanwhile."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(f"{settings.queue_prefix}{AVATAR_USED}.dlq")
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            avatar_id = json.loads(message.body)["data"]["avatarId"]
            reason = (message.headers or {}).get("x-dead-letter-reason")
            assert avatar_id in deleted, f"{context}: dead-lettered a use of a live avatar: {reason!r}"
