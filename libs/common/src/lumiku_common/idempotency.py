"""Exactly-once operations, for every service that takes idempotency keys: a key is claimed by a UNIQUE
insert in the operation's own transaction.

The claim and the operation's effects commit together or not at all, so a failed attempt (402, 409, a
crash) leaves the key free for a retry, and a committed one is replayed, never re-run: the same status and the
same JSON value (not byte for byte: the answer is kept as jsonb, which orders an object's keys its own way). A
concurrent attempt with the same key waits on the first one's row lock, then replays or conflicts.

A service adds the table to its own metadata (`idempotency_table(Base.metadata)`) and migrates it like any
other of its tables; `Idempotency(table).once(...)` runs an operation once per key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StringConstraints
from sqlalchemy import Column, DateTime, MetaData, SmallInteger, String, Table, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.errors import Conflict
from lumiku_common.schemas import CleanStr

REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX_LENGTH = 200

# A client's key (body field or `Idempotency-Key` header): 1-200 printable characters.
IdempotencyKey = Annotated[CleanStr, StringConstraints(min_length=1, max_length=KEY_MAX_LENGTH)]
# The `Idempotency-Key` header of a public write, optional.
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=KEY_MAX_LENGTH,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe write: a replay answers the first response (`Idempotent-Replayed: true`) and "
        "changes nothing; the same key with another body is 409",
    ),
]


def idempotency_table(metadata: MetaData, key_length: int = KEY_MAX_LENGTH) -> Table:
    """The `idempotency_keys` table in a service's metadata (a service scoping keys per user makes room)."""
    return Table(
        "idempotency_keys",
        metadata,
        Column("key", String(key_length), primary_key=True),
        Column("operation", String(20), nullable=False),
        Column("request_hash", String(64), nullable=False),
        Column("status_code", SmallInteger, nullable=True),
        Column("response", JSONB, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


class IdempotencyConflict(Conflict):
    message = "Idempotency key already used with a different request"


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False

    def response(self) -> JSONResponse:
        headers = {REPLAYED_HEADER: "true"} if self.replayed else None
        return JSONResponse(self.body, status_code=self.status_code, headers=headers)


def request_hash(operation: str, request: dict[str, Any]) -> str:
    canonical = json.dumps({"operation": operation, "request": request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    def __init__(self, table: Table):
        self.table = table

    async def once(
        self,
        session: AsyncSession,
        *,
        key: str,
        operation: str,
        request: dict[str, Any],
        status_code: int,
        action: Callable[[], Awaitable[BaseModel]],
    ) -> Outcome:
        digest = request_hash(operation, request)
        if await self._claim(session, key, operation, digest):
            body = (await action()).model_dump(mode="json")
            await session.execute(
                update(self.table).where(self.table.c.key == key).values(status_code=status_code, response=body)
            )
            return Outcome(status_code, body)
        stored = (await session.execute(select(self.table).where(self.table.c.key == key))).one()
        if stored.request_hash != digest or stored.status_code is None or stored.response is None:
            raise IdempotencyConflict()
        return Outcome(stored.status_code, stored.response, replayed=True)

    async def _claim(self, session: AsyncSession, key: str, operation: str, digest: str) -> bool:
        """True if this transaction now owns `key`; waits while another uncommitted transaction owns it."""
        stmt = (
            pg_insert(self.table)
            .values(key=key, operation=operation, request_hash=digest)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(self.table.c.key)
        )
        return (await session.execute(stmt)).first() is not None
