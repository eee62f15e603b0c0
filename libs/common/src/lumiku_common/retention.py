"""Rows a service needs only for a while: idempotency keys (a retry comes within minutes, not weeks) and
tombstones that guard work still in flight. A service names them in its `ServiceSpec.retained`; its runtime
deletes the older ones with the published outbox rows and handled inbox ids, every PRUNE_INTERVAL_SECONDS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import DeclarativeBase

from lumiku_common.db import Database, utcnow

BATCH = 5000  # rows a transaction: a first prune after long growth never holds one long transaction


@dataclass(frozen=True)
class Retention:
    table: Table  # with a one-column primary key
    stamp: str  # the column of when the row was written
    keep: timedelta

    @classmethod
    def of_model(cls, model: type[DeclarativeBase], stamp: str, keep: timedelta) -> Retention:
        """For an ORM model's table (its `__table__` is typed as any FROM clause, not as the table it is)."""
        return cls(model.metadata.tables[model.__tablename__], stamp, keep)

    async def prune(self, db: Database) -> int:
        """Deletes the rows older than `keep`, a batch at a time; how many."""
        [key] = self.table.primary_key.columns
        total = 0
        while True:
            older = select(key).where(self.table.c[self.stamp] < utcnow() - self.keep).limit(BATCH)
            async with db.unit_of_work() as session:
                deleted = (await session.execute(delete(self.table).where(key.in_(older)))).rowcount  # type: ignore[attr-defined]
            total += deleted
            if deleted < BATCH:
                return total
