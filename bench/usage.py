"""Usage: ingest, propagation and history, each against a baseline of the same run.

1. Ingest: N `avatar.used` events published with confirms, timed until every usage row and every avatar
   counter is committed (usage's batch consumer, outbox relay, avatars' batch counter consumer), vs the raw
   broker rate of the same queue type: N messages of the same size published with confirms to a quorum
   queue and consumed with manual acks (prefetch 400). Lost and duplicated rows are counted. Several rounds,
   each with its own raw baseline right before it; the median ratio is reported.
2. Propagation: track-usage through the gateway, then the avatar's `usageCount` polled through the gateway
   until it shows the use: p50/p99 at idle (one at a time).
3. History: `usage-history` through the gateway for an avatar with 100k rows, first page and a deep page
   (row ~90k, by cursor), vs the plain indexed `SELECT … ORDER BY created_at DESC, id DESC LIMIT 100` on the
   same table (asyncpg, same deep position).

The suite runs as real processes (projects, credits, avatars, usage behind the gateway; uvicorn, as `make dev`
starts them), on their own databases and queues (namespace `bench_usage`); `--one-process` runs it all
in-process instead, where the three hops of an ingested use (usage's consumer, its relay, avatars' consumer)
share one event loop with the publisher and the raw baseline.

    uv run python -m bench.usage [--events 5000] [--repeat 3] [--rows 100000] [--samples 200]
                                 [--only ingest propagation history]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
from PIL import Image

import lumiku_avatars
import lumiku_credits
import lumiku_projects
import lumiku_usage
from bench.lib import Stats, measure, report
from lumiku_avatars.main import create_app as create_avatars
from lumiku_avatars.settings import AvatarsSettings
from lumiku_common.ids import new_id
from lumiku_common.messaging.events import Envelope
from lumiku_common.settings import ServiceSettings
from lumiku_credits.main import create_app as create_credits
from lumiku_credits.settings import CreditsSettings
from lumiku_devtools.gateway import gateway_for
from lumiku_devtools.processes import real_suite
from lumiku_devtools.testing import auth, delete_queues, prepare_database, settings_for_tests
from lumiku_projects.main import create_app as create_projects
from lumiku_projects.settings import ProjectsSettings
from lumiku_usage.handlers import AVATAR_EVENTS, AVATAR_USED
from lumiku_usage.main import create_app as create_usage
from lumiku_usage.schemas import Cursor
from lumiku_usage.settings import UsageSettings

APP = "/api/apps/avatar-creator"
NS = "bench_usage"
PARTS = ["ingest", "propagation", "history"]
SUITE = ("projects", "credits", "avatars", "usage")
# The relays' poll as deployed (the test suite polls every 50 ms): commits wake a relay at once either way, so
# the poll only matters when idle, where five relays at 20 Hz cost the shared machine ~5 % of a core each.
POLL = str(UsageSettings.model_fields["outbox_poll_seconds"].default)
AS_DEPLOYED = {name: {"OUTBOX_POLL_SECONDS": POLL} for name in SUITE}


def raw_url(settings: ServiceSettings) -> str:
    return settings.database_url.replace("postgresql+asyncpg", "postgresql")


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def used(user_id: str, avatar_id: str, n: int) -> tuple[str, bytes]:
    env = Envelope(
        id=new_id(),
        type="avatar.used",
        source="bench",
        time=datetime.now(UTC),
        user_id=user_id,
        data={
            "avatarId": avatar_id,
            "appId": "pose-generator",
            "appName": "Pose Generator",
            "action": "generate_pose",
            "referenceId": f"ref-{n}",
        },
    )
    return env.id, env.model_dump_json(by_alias=True).encode()


async def publish_all(amqp_url: str, exchange_name: str, routing_key: str, bodies: list[tuple[str, bytes]]) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        for start in range(0, len(bodies), 500):  # 500 confirms in flight at a time
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(body, message_id=mid, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key,
                    )
                    for mid, body in bodies[start : start + 500]
                )
            )


async def raw_broker(amqp_url: str, bodies: list[tuple[str, bytes]]) -> float:
    """Seconds to publish (confirms) and consume+ack every message through a quorum queue."""
    name = f"bench.raw.{uuid.uuid4().hex[:8]}"
    exchange_name = f"{name}.x"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=400)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        await queue.bind(exchange, "avatar.used")
        done = asyncio.Event()
        seen = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            await message.ack()
            seen += 1
            if seen >= len(bodies):
                done.set()

        await queue.consume(on_message)
        started = time.perf_counter()
        await publish_all(amqp_url, exchange_name, "avatar.used", bodies)
        await asyncio.wait_for(done.wait(), 600)
        seconds = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
    return seconds


async def owners_for_ingest(api: httpx.AsyncClient, usage: UsageSettings) -> list[tuple[str, str]]:
    owners: list[tuple[str, str]] = []
    for _ in range(4):
        user_id = f"bench-{new_id()}"
        headers = auth(usage, user_id)
        project = (await api.post(f"{APP}/projects", json={"name": "Bench"}, headers=headers)).json()["project"]["id"]
        for _ in range(5):
            response = await api.post(
                f"{APP}/projects/{project}/avatars",
                data={"name": "Bench"},
                files={"image": ("a.jpg", jpeg(), "image/jpeg")},
                headers=headers,
            )
            owners.append((user_id, response.json()["avatar"]["id"]))
    return owners


async def ingest(
    api: httpx.AsyncClient, usage: UsageSettings, avatars: AvatarsSettings, events: int
) -> tuple[float, float, dict[str, Any]]:
    """One round: the raw broker rate, then the suite's ingest of the same messages (fresh avatars)."""
    owners = await owners_for_ingest(api, usage)
    bodies = [used(*owners[n % len(owners)], n) for n in range(events)]
    raw_seconds = await raw_broker(usage.amqp_url, bodies)

    usage_db = await asyncpg.connect(raw_url(usage))
    avatars_db = await asyncpg.connect(raw_url(avatars))
    ids = [a for _, a in owners]
    try:
        started = time.perf_counter()
        await publish_all(usage.amqp_url, usage.events_exchange, "avatar.used", bodies)
        published = recorded = time.perf_counter() - started  # where the time goes: publish, rows, counters
        while True:
            # The rollups commit with the rows: a sum over 20 rows instead of counting thousands (the polling
            # shares the machine with what it measures); the rows themselves are counted at the end.
            rows = await usage_db.fetchval(
                "SELECT coalesce(sum(uses), 0) FROM usage_totals WHERE avatar_id = ANY($1)", ids
            )
            counted = await avatars_db.fetchval("SELECT sum(usage_count) FROM avatars WHERE id = ANY($1)", ids)
            if rows < events:
                recorded = time.perf_counter() - started
            if rows >= events and (counted or 0) >= events:
                break
            if time.perf_counter() - started > 600:
                break
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        await asyncio.sleep(1)  # anything late (a duplicate) would show now
        rows = await usage_db.fetchval("SELECT count(*) FROM usage_events WHERE avatar_id = ANY($1)", ids)
        distinct = await usage_db.fetchval(
            "SELECT count(DISTINCT reference_id) FROM usage_events WHERE avatar_id = ANY($1)", ids
        )
        counted = await avatars_db.fetchval("SELECT sum(usage_count) FROM avatars WHERE id = ANY($1)", ids)
    finally:
        await usage_db.close()
        await avatars_db.close()
    notes = {
        "events": events,
        "rows": rows,
        "lost": events - distinct,
        "duplicated": rows - distinct,
        "counters": int(counted or 0),
        "published_seconds": round(published, 3),
        "rows_seconds": round(recorded, 3),
        "ingest_seconds": round(seconds, 3),
        "raw_seconds": round(raw_seconds, 3),
        "ingest_per_second": round(events / seconds, 1),
        "raw_per_second": round(events / raw_seconds, 1),
    }
    return seconds, raw_seconds, notes


async def propagation(api: httpx.AsyncClient, usage: UsageSettings, samples: int) -> Stats:
    user_id = f"bench-{new_id()}"
    headers = auth(usage, user_id)
    project = (await api.post(f"{APP}/projects", json={"name": "Bench"}, headers=headers)).json()["project"]["id"]
    avatar = (
        await api.post(
            f"{APP}/projects/{project}/avatars",
            data={"name": "Bench"},
            files={"image": ("a.jpg", jpeg(), "image/jpeg")},
            headers=headers,
        )
    ).json()["avatar"]["id"]
    count = 0

    async def one(i: int) -> None:
        nonlocal count
        body = {"avatarId": avatar, "appId": "pose-generator", "appName": "Pose", "action": "generate_pose"}
        response = await api.post(f"{APP}/track-usage", json=body, headers=headers)
        assert response.status_code == 201, response.text
        count += 1
        deadline = time.perf_counter() + 10
        while True:
            got = (await api.get(f"{APP}/avatars/{avatar}", headers=headers)).json()["avatar"]["usageCount"]
            if got >= count:
                return
            if time.perf_counter() > deadline:
                raise TimeoutError("usageCount never followed")
            await asyncio.sleep(0.002)

    return await measure("track-usage -> usageCount visible", one, concurrency=1, requests=samples, warmup=5)


async def history(api: httpx.AsyncClient, usage: UsageSettings, rows: int, samples: int) -> list[Stats]:
    user_id = f"bench-{new_id()}"
    avatar = new_id()
    headers = auth(usage, user_id)
    db = await asyncpg.connect(raw_url(usage))
    try:
        await db.execute("INSERT INTO known_avatars (avatar_id, user_id) VALUES ($1, $2)", avatar, user_id)
        newest = datetime.now(UTC).replace(microsecond=0)
        await db.execute(
            """
            INSERT INTO usage_events (id, created_at, user_id, avatar_id, app_id, app_name, action, reference_id)
            SELECT lpad(g::text, 26, '0'), $3::timestamptz - make_interval(secs => g * 10), $1, $2,
                   CASE WHEN g % 3 = 0 THEN 'poster-editor' ELSE 'pose-generator' END, 'App', 'use', 'ref-' || g
            FROM generate_series(1, $4) AS g
            """,
            user_id,
            avatar,
            newest,
            rows,
        )
        await db.execute(
            """
            INSERT INTO usage_totals (avatar_id, app_id, user_id, uses, last_used_at)
            SELECT avatar_id, app_id, user_id, count(*), max(created_at) FROM usage_events WHERE avatar_id = $1
            GROUP BY avatar_id, app_id, user_id
            """,
            avatar,
        )
        await db.execute("ANALYZE usage_events")
        deep = int(rows * 0.9)
        at, row_id = await db.fetchrow(
            "SELECT created_at, id FROM usage_events WHERE avatar_id = $1 "
            "ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
            avatar,
            deep,
        )
        cursor = Cursor(created_at=at, id=row_id).encode()
        url = f"{APP}/avatars/{avatar}/usage-history"

        async def first(i: int) -> None:
            response = await api.get(url, headers=headers)
            assert response.status_code == 200 and len(response.json()["history"]) == 100

        async def deep_page(i: int) -> None:
            response = await api.get(url, params={"cursor": cursor}, headers=headers)
            assert response.status_code == 200 and len(response.json()["history"]) == 100

        plain_first = "SELECT * FROM usage_events WHERE avatar_id = $1 ORDER BY created_at DESC, id DESC LIMIT 100"
        plain_deep = (
            "SELECT * FROM usage_events WHERE avatar_id = $1 AND (created_at, id) < ($2, $3) "
            "ORDER BY created_at DESC, id DESC LIMIT 100"
        )

        async def sql_first(i: int) -> None:
            assert len(await db.fetch(plain_first, avatar)) == 100

        async def sql_deep(i: int) -> None:
            assert len(await db.fetch(plain_deep, avatar, at, row_id)) == 100

        return [
            await measure("history first page (gateway)", first, concurrency=1, requests=samples),
            await measure("history deep page ~90k (gateway)", deep_page, concurrency=1, requests=samples),
            await measure("plain SELECT LIMIT 100 first", sql_first, concurrency=1, requests=samples),
            await measure("plain SELECT LIMIT 100 deep", sql_deep, concurrency=1, requests=samples),
        ]
    finally:
        await db.close()


async def rounds_of_ingest(
    api: httpx.AsyncClient, usage: UsageSettings, avatars: AvatarsSettings, events: int, repeat: int
) -> tuple[float, dict[str, Any]]:
    """The median ratio of `repeat` rounds (each against its own raw baseline: the machine is shared)."""
    rounds = [await ingest(api, usage, avatars, events) for _ in range(repeat)]
    ratios = sorted(raw / ours for ours, raw, _ in rounds)
    notes = {
        "rounds": [n for _, _, n in rounds],
        "ingest_ratios": [round(r, 3) for r in ratios],
        "lost": sum(n["lost"] for _, _, n in rounds),
        "duplicated": sum(n["duplicated"] for _, _, n in rounds),
        "counters_off": sum(n["counters"] - n["events"] for _, _, n in rounds),
    }
    return statistics.median(ratios), notes


@contextlib.asynccontextmanager
async def in_process() -> AsyncIterator[tuple[httpx.AsyncClient, UsageSettings, AvatarsSettings]]:
    """Every service and the gateway in this process, on one event loop (and one core)."""
    storage = Path(f"/tmp/lumiku-bench-usage-{uuid.uuid4().hex[:6]}")
    projects = settings_for_tests(ProjectsSettings, NS, log_level="ERROR")
    credits = settings_for_tests(CreditsSettings, NS, credits_sweep_seconds=3600, log_level="ERROR")
    avatars = settings_for_tests(AvatarsSettings, NS, storage_path=str(storage), log_level="ERROR")
    usage = settings_for_tests(UsageSettings, NS, log_level="ERROR")
    for settings, package in (
        (projects, lumiku_projects),
        (credits, lumiku_credits),
        (avatars, lumiku_avatars),
        (usage, lumiku_usage),
    ):
        await prepare_database(settings, Path(str(package.__file__)).parent / "migrations")
    services: dict[str, Any] = {
        "projects": create_projects(projects),
        "credits": create_credits(credits),
        "avatars": lambda t: create_avatars(avatars, t),
        "usage": lambda t: create_usage(usage, t),
    }
    try:
        async with gateway_for(services, storage_path=str(storage)) as api:
            yield api, usage, avatars
    finally:
        await delete_queues(usage, AVATAR_EVENTS, AVATAR_USED)
        await delete_queues(avatars, "avatars.project-events", "avatars.usage-events")


@contextlib.asynccontextmanager
async def as_processes() -> AsyncIterator[tuple[httpx.AsyncClient, UsageSettings, AvatarsSettings]]:
    """The services and the gateway as the uvicorn processes `make dev` runs (each with its workers), as
    deployed: usage's consumer and relay and avatars' counter consumer each have their own process."""
    async with (
        real_suite(SUITE, NS, service_env=AS_DEPLOYED, ready_timeout=180, respawn=True) as suite,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{suite.gateway.port}", timeout=30) as api,
    ):
        usage, avatars = suite.settings["usage"], suite.settings["avatars"]
        assert isinstance(usage, UsageSettings) and isinstance(avatars, AvatarsSettings)
        yield api, usage, avatars


async def run(events: int, rows: int, samples: int, repeat: int, only: set[str], one_process: bool) -> None:
    stats: list[Stats] = []
    ratios: dict[str, float] = {}
    notes: dict[str, Any] = {}
    async with in_process() if one_process else as_processes() as (api, usage, avatars):
        if "ingest" in only:
            ratios["ingest_vs_raw_broker_median"], notes = await rounds_of_ingest(api, usage, avatars, events, repeat)
        if "propagation" in only:
            stats.append(prop := await propagation(api, usage, samples))
            notes["propagation_p99_ms"] = prop.p99_ms
        if "history" in only:
            stats += (hist := await history(api, usage, rows, samples))
            ratios |= {
                "history_first_p95_vs_plain_select": round(hist[0].p95_ms / hist[2].p95_ms, 3),
                "history_deep_p95_vs_plain_select": round(hist[1].p95_ms / hist[3].p95_ms, 3),
                "history_deep_p95_vs_first_p95": round(hist[1].p95_ms / hist[0].p95_ms, 3),
            }
            notes |= {"history_rows": rows, "history_first_p95_ms": hist[0].p95_ms}
    notes["suite"] = "one process" if one_process else "processes"
    print(json.dumps(notes, indent=2))
    report("usage", stats, ratios, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="ingest rounds; the median ratio is reported")
    parser.add_argument("--only", nargs="*", choices=PARTS, default=PARTS)
    parser.add_argument("--one-process", action="store_true", help="the suite in-process instead of processes")
    args = parser.parse_args()
    asyncio.run(run(args.events, args.rows, args.samples, args.repeat, set(args.only), args.one_process))


if __name__ == "__main__":
    main()
