"""The ledger as CSV, streamed in batches from its own session (the request's has committed by then)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.csv_export import safe_cell, stream_csv
from lumiku_common.db import Database
from lumiku_common.schemas import iso_utc
from lumiku_credits.models import LedgerEntry
from lumiku_credits.repository import CreditsRepository
from lumiku_credits.schemas import HistoryParams

COLUMNS = ["id", "createdAt", "type", "amount", "balance", "description", "referenceId", "referenceType"]
BATCH = 500


def _row(entry: LedgerEntry) -> list[object]:
    return [
        entry.id,
        iso_utc(entry.created_at),
        entry.type,
        entry.amount,
        entry.balance_after,
        safe_cell(entry.description),
        safe_cell(entry.reference_id),
        safe_cell(entry.reference_type),
    ]


def csv_lines(db: Database, user_id: str, params: HistoryParams) -> AsyncIterator[str]:
    """Every entry matching the filters, newest first, with its running balance; pages are ignored."""

    def query(session: AsyncSession) -> Select[Any]:
        return CreditsRepository(session).entries_query(user_id, params.type, params.from_, params.to)

    return stream_csv(db, COLUMNS, query, _row, BATCH)
