"""The ledger as CSV, streamed in batches from its own session (the request's has committed by then)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence

from lumiku_common.db import Database
from lumiku_common.schemas import iso_utc
from lumiku_credits.models import LedgerEntry
from lumiku_credits.repository import CreditsRepository
from lumiku_credits.schemas import HistoryParams

COLUMNS = ["id", "createdAt", "type", "amount", "balance", "description", "referenceId", "referenceType"]
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
BATCH = 500


def _cell(value: str | None) -> str:
    # A spreadsheet runs a cell starting with these as a formula: user-influenced text must stay text.
    text = value or ""
    return f"'{text}" if text.startswith(_FORMULA_PREFIXES) else text


def _row(entry: LedgerEntry) -> list[object]:
    return [
        entry.id,
        iso_utc(entry.created_at),
        entry.type,
        entry.amount,
        entry.balance_after,
        _cell(entry.description),
        _cell(entry.reference_id),
        _cell(entry.reference_type),
    ]


def _encode(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


async def csv_lines(db: Database, user_id: str, params: HistoryParams) -> AsyncIterator[str]:
    """Every entry matching the filters, newest first, with its running balance; pages are ignored."""
    yield _encode([COLUMNS])
    # One read-only repeatable-read transaction: the export is one consistent snapshot of the ledger.
    async with db.sessions() as session:
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        query = CreditsRepository(session).entries_query(user_id, params.type, params.from_, params.to)
        result = await session.stream_scalars(query.execution_options(yield_per=BATCH))
        async for batch in result.partitions():
            yield _encode([_row(entry) for entry in batch])
