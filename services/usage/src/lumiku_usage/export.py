"""The caller's usage rows as CSV, streamed in batches from its own session, formula-safe like credits'."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from lumiku_common.db import Database
from lumiku_common.schemas import iso_utc
from lumiku_usage.models import UsageEvent
from lumiku_usage.repository import UsageRepository

COLUMNS = ["id", "createdAt", "avatarId", "appId", "appName", "action", "referenceId", "referenceType", "metadata"]
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
BATCH = 1000


def cell(value: str | None) -> str:
    # A spreadsheet runs a cell starting with these as a formula: user-influenced text must stay text.
    text = value or ""
    return f"'{text}" if text.startswith(_FORMULA_PREFIXES) else text


def _row(use: UsageEvent) -> list[object]:
    metadata = json.dumps(use.meta, separators=(",", ":"), ensure_ascii=False) if use.meta is not None else None
    return [
        use.id,
        iso_utc(use.created_at),
        cell(use.avatar_id),
        cell(use.app_id),
        cell(use.app_name),
        cell(use.action),
        cell(use.reference_id),
        cell(use.reference_type),
        cell(metadata),
    ]


def _encode(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


async def csv_lines(
    db: Database, user_id: str, since: datetime, until: datetime, app_id: str | None, avatar_id: str | None
) -> AsyncIterator[str]:
    yield _encode([COLUMNS])
    async with db.sessions() as session:
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        query = UsageRepository(session).export_query(user_id, since, until, app_id, avatar_id)
        result = await session.stream_scalars(query.execution_options(yield_per=BATCH))
        async for batch in result.partitions():
            yield _encode([_row(use) for use in batch])
