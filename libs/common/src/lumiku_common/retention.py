"""Rows a service needs only for a while: idempotency keys (a retry comes within minutes, not weeks) and
tombstones that guard work still in flight. A service names them in its `ServiceSpec.retained`; its runtime
deletes the older ones with the published outbox rows and handled inbox ids, every PRUNE_INTERVAL_SECONDS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Table, delete

from lumiku_common.db import Database, utcnow


@dataclass(frozen=True)
class Retention:
    table: Table
    stamp: str  # the column of when the row was written
    keep: timedelta

    async def prune(self, db: Database) -> int:
        """Deletes the rows older than `keep`; how many."""
        older = self.table.c[self.stamp] < utcnow() - self.keep
        async with db.unit_of_work() as session:
            result = await session.execute(delete(self.table).where(older))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
