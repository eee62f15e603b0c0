"""Reads what the checker needs straight from the databases, the broker and the object store (never through
the services' APIs: the point is to see what they stored), and tells when the system has settled."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lumiku_common.settings import ServiceSettings
from lumiku_common.storage import FilesystemStorage
from lumiku_devtools.processes import QUEUES
from lumiku_devtools.system.invariants import AvatarRow, DlqEntry, Snapshot
from lumiku_devtools.system.load import Record
from lumiku_devtools.testing import EventSpy

HOLD_SWEEP_GRACE_SECONDS = 10  # credits sweeps expired holds every CREDITS_SWEEP_SECONDS (1 s here)
AVATAR_PREFIX = "avatars/"


@dataclass
class Sources:
    settings: dict[str, ServiceSettings]  # per service, pointing at the real servers (not the proxies)
    storage_path: str
    record: Record
    created: EventSpy  # avatar.created, all run long
    deleted: EventSpy  # avatar.deleted
    finished: EventSpy  # generation.finished: which job made which avatars, kept after a project's jobs go
    engines: dict[str, AsyncEngine]  # one connection per database, taken before the load (see `engines`)


@contextlib.asynccontextmanager
async def engines(settings: dict[str, ServiceSettings]) -> AsyncIterator[dict[str, AsyncEngine]]:
    """One connection per service database, opened now and kept: the shared server may be full of other runs'
    connections by the time the checker needs them."""
    opened = {
        n: create_async_engine(s.database_url, pool_size=1, max_overflow=0)
        for n, s in settings.items()
        if n != "gateway"
    }
    try:
        for engine in opened.values():
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        yield opened
    finally:
        for engine in opened.values():
            await engine.dispose()


async def _generated_by(sources: Sources) -> dict[str, str]:
    """Generated avatar -> its job: from the jobs' rows, and from `generation.finished` for the jobs a deleted
    project took with it."""
    made = {
        avatar: e["data"]["generationId"]
        for e in sources.finished.of_type("generation.finished")
        for avatar in e["data"]["avatarIds"]
    }
    return made | dict(await _rows(sources, "generation", "SELECT id, generation_id FROM generation_images"))


async def _rows(sources: Sources, service: str, sql: str) -> list[Any]:
    async with sources.engines[service].connect() as conn:
        return list((await conn.execute(text(sql))).all())


async def _scalar(sources: Sources, service: str, sql: str) -> int:
    return int((await _rows(sources, service, sql))[0][0] or 0)


def _queue_names(sources: Sources) -> dict[str, str]:
    """Every work queue of the run (full name -> its service)."""
    return {sources.settings[s].queue_prefix + q: s for s, queues in QUEUES.items() for q in queues}


async def queue_depths(sources: Sources, suffix: str = "") -> dict[str, int]:
    depths: dict[str, int] = {}
    amqp_url = next(iter(sources.settings.values())).amqp_url
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in _queue_names(sources):
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name + suffix, passive=True)
                depths[name + suffix] = queue.declaration_result.message_count or 0
            except aio_pika.exceptions.ChannelClosed:
                depths[name + suffix] = 0  # never declared: nothing in it
    return depths


async def outbox_pending(sources: Sources) -> dict[str, int]:
    return {
        name: await _scalar(sources, name, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
        for name in sources.engines
    }


async def objects(storage_path: str) -> set[str]:
    return {info.key async for info in FilesystemStorage(storage_path).list(AVATAR_PREFIX)}


async def settled(sources: Sources) -> list[str]:
    """What is still moving (empty: settled): outboxes, queues, unfinished jobs, pending object deletions,
    injected events not yet dead-lettered, objects and rows that do not match yet (the orphan sweeper)."""
    busy = [f"outbox {s}: {n}" for s, n in (await outbox_pending(sources)).items() if n]
    busy += [f"queue {q}: {n}" for q, n in (await queue_depths(sources)).items() if n]
    jobs = await _scalar(
        sources, "generation", "SELECT count(*) FROM generations WHERE status IN ('queued', 'running')"
    )
    deletions = await _scalar(sources, "avatars", "SELECT count(*) FROM object_deletions")
    busy += [f"{n} {what}" for n, what in ((jobs, "generation jobs unfinished"), (deletions, "object deletions")) if n]
    dead = sum((await queue_depths(sources, ".dlq")).values())
    if dead < len(sources.record.injected):
        busy.append(f"dead letters {dead} < injected {len(sources.record.injected)}")
    keys = {k for row in (await _avatar_rows(sources)).values() for k in row.keys}
    if (stored := await objects(sources.storage_path)) != keys:
        busy.append(f"objects {len(stored)} != referenced {len(keys)}")
    return busy


async def _avatar_rows(sources: Sources) -> dict[str, AvatarRow]:
    rows = await _rows(
        sources,
        "avatars",
        "SELECT id, user_id, source_type, base_image_key, thumbnail_key, usage_count FROM avatars",
    )
    return {r[0]: AvatarRow(r[1], r[2], tuple(k for k in (r[3], r[4]) if k), r[5]) for r in rows}


async def dead_letters(sources: Sources) -> list[DlqEntry]:
    """Takes every message off every DLQ of the run."""
    entries: list[DlqEntry] = []
    connection = await aio_pika.connect(next(iter(sources.settings.values())).amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in _queue_names(sources):
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                queue = await channel.declare_queue(f"{name}.dlq", passive=True)
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    entries.append(_dlq_entry(name, message))
            channel = await connection.channel() if channel.is_closed else channel
    return entries


def _dlq_entry(queue: str, message: aio_pika.abc.AbstractIncomingMessage) -> DlqEntry:
    try:
        body = json.loads(message.body)
    except ValueError:
        body = {}
    data = body.get("data") if isinstance(body, dict) else None
    avatar = data.get("avatarId", "") if isinstance(data, dict) else ""
    event_id = message.message_id or (body.get("id", "") if isinstance(body, dict) else "")
    reason = str((message.headers or {}).get("x-dead-letter-reason", ""))
    return DlqEntry(queue, str(event_id), str(avatar), reason)


async def take(sources: Sources) -> Snapshot:
    credits, usage = "credits", "usage"
    announced = {
        e["data"]["avatarId"]: (e["userId"], e["data"]["sourceType"]) for e in sources.created.of_type("avatar.created")
    }
    usage_rows: dict[str, Counter[str]] = {}
    for avatar, reference, n in await _rows(
        sources, usage, "SELECT avatar_id, reference_id, count(*) FROM usage_events GROUP BY avatar_id, reference_id"
    ):
        usage_rows.setdefault(avatar, Counter())[reference] += n
    overdue = await _rows(
        sources,
        credits,
        "SELECT id FROM holds WHERE status = 'active'"
        f" AND expires_at < now() - interval '{HOLD_SWEEP_GRACE_SECONDS} seconds'",
    )
    return Snapshot(
        wallets=dict(await _rows(sources, credits, "SELECT user_id, balance FROM wallets")),
        ledger_sums={
            u: int(s)
            for u, s in await _rows(
                sources, credits, "SELECT user_id, sum(amount) FROM ledger_entries GROUP BY user_id"
            )
        },
        grants=dict(sources.record.grants),
        announced=announced,
        deleted={e["data"]["avatarId"] for e in sources.deleted.of_type("avatar.deleted")},
        avatars=await _avatar_rows(sources),
        generated_by=await _generated_by(sources),
        holds_overdue=[r[0] for r in overdue],
        holds_active=await _scalar(sources, credits, "SELECT count(*) FROM holds WHERE status = 'active'")
        - len(overdue),
        usage_rows=usage_rows,
        accepted_uses=sources.record.accepted_uses,
        uncertain_uses=sources.record.uncertain_uses,
        objects=await objects(sources.storage_path),
        outbox_pending=await outbox_pending(sources),
        queue_depths=await queue_depths(sources),
        dlq=await dead_letters(sources),
        injected_ids=set(sources.record.injected),
        now=datetime.now(UTC),
    )
