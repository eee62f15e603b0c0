"""The caller's usage rows as CSV, streamed in batches from its own session, formula-safe (lumiku_common.csv_export)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.csv_export import safe_cell, stream_csv
from lumiku_common.db import Database
from lumiku_common.schemas import iso_utc
from lumiku_usage.models import UsageEvent
from lumiku_usage.repository import UsageRepository

COLUMNS = ["id", "createdAt", "avatarId", "appId", "appName", "action", "referenceId", "referenceType", "metadata"]
BATCH = 1000


def _row(use: UsageEvent) -> list[object]:
    metadata = json.dumps(use.meta, separators=(",", ":"), ensure_ascii=False) if use.meta is not None else None
    return [
        use.id,
        iso_utc(use.created_at),
        safe_cell(use.avatar_id),
        safe_cell(use.app_id),
        safe_cell(use.app_name),
        safe_cell(use.action),
        safe_cell(use.reference_id),
        safe_cell(use.reference_type),
        safe_cell(metadata),
    ]


def csv_lines(
    db: Database, user_id: str, since: datetime, until: datetime, app_id: str | None, avatar_id: str | None
) -> AsyncIterator[str]:
    def query(session: AsyncSession) -> Select[Any]:
        return UsageRepository(session).export_query(user_id, since, until, app_id, avatar_id)

    return stream_csv(db, COLUMNS, query, _row, BATCH)
