"""CSV exports, once: formula-safe cells, and rows streamed in batches from one consistent snapshot.

The export runs in its own session (the request's has committed by the time the body streams), in one
read-only REPEATABLE READ transaction, so every row comes from the same moment however long the stream takes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.db import Database

R = TypeVar("R")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str | None) -> str:
    # A spreadsheet runs a cell starting with these as a formula: user-influenced text must stay text.
    text = value or ""
    return f"'{text}" if text.startswith(_FORMULA_PREFIXES) else text


def _encode(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


async def stream_csv(
    db: Database,
    columns: Sequence[str],
    query: Callable[[AsyncSession], Select[Any]],
    row: Callable[[R], Sequence[object]],
    batch: int,
) -> AsyncIterator[str]:
    """The header line, then `row(...)` of every result of `query(session)`, `batch` rows per chunk."""
    yield _encode([list(columns)])
    async with db.sessions() as session:
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        result = await session.stream_scalars(query(session).execution_options(yield_per=batch))
        async for part in result.partitions():
            yield _encode([row(item) for item in part])
