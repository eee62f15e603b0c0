"""Exactly-once operations, for every service that takes idempotency keys: a key is claimed by a UNIQUE
insert in the operation's own transaction.

The claim and the operation's effects commit together or not at all, so a failed attempt (402, 409, a
crash) leaves the key free for a retry, and a committed one is replayed, never re-run: the same status and the
same JSON value (not byte for byte: the answer is kept as jsonb, which orders an object's keys its own way). A
concurrent attempt with the same key waits on the first one's row lock, then replays or conflicts.

A service adds the table to its own metadata (`idempotency_table(Base.metadata)`) and migrates it like any
other of its tables, and prunes it (`key_retention`); `Idempotency(table).once(...)` runs an operation once per
key.

An operation with effects outside its transaction (objects stored, credits held over HTTP) cannot run inside
`once`: it asks `recorded` for a committed answer before any such effect, and `record`s its own answer as the
first statement of its transaction. When `record` finds the key taken by a concurrent attempt that committed
first, the operation undoes its outside effects and answers what `recorded` now returns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StringConstraints
from sqlalchemy import Column, DateTime, MetaData, SmallInteger, String, Table, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.auth import MAX_USER_ID_LENGTH
from lumiku_common.errors import Conflict
from lumiku_common.retention import Retention
from lumiku_common.schemas import CleanStr
from lumiku_common.settings import ServiceSettings

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


# A public write's key is scoped to its caller, so one user's key never replays another user's answer.
USER_SCOPED_KEY_LENGTH = MAX_USER_ID_LENGTH + 1 + KEY_MAX_LENGTH


def user_scoped(user_id: str, key: str) -> str:
    return f"{user_id}:{key}"


def key_retention(table: Table, settings: ServiceSettings) -> Retention:
    """For `ServiceSpec.retained`: a key's record is pruned after IDEMPOTENCY_KEY_RETENTION_DAYS."""
    return Retention(table, "created_at", timedelta(days=settings.idempotency_key_retention_days))


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


# The OpenAPI of a write's success answer, which may be a replay.
_REPLAYED_DOC = {"description": "`true` when this answers a replayed Idempotency-Key", "schema": {}}
REPLAYABLE = {"headers": {REPLAYED_HEADER: _REPLAYED_DOC}}


def replayed_headers(replayed: bool) -> dict[str, str] | None:
    return {REPLAYED_HEADER: "true"} if replayed else None


class IdempotencyConflict(Conflict):
    message = "Idempotency key already used with a different request"


@dataclass(frozen=True)
class Outcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status_code, headers=replayed_headers(self.replayed))


def request_hash(operation: str, request: dict[str, Any]) -> str:
    canonical = json.dumps({"operation": operation, "request": request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Attempt:
    """One request under a key: what `recorded` and `record` compare a stored answer with."""

    key: str
    operation: str
    digest: str

    @classmethod
    def of(cls, key: str, operation: str, request: dict[str, Any]) -> Attempt:
        return cls(key, operation, request_hash(operation, request))


class KeyTakenMeanwhile(Exception):
    """A concurrent attempt with the same key committed first: roll back, undo what was done outside the
    transaction, and answer what `recorded` returns."""

    def __init__(self, attempt: Attempt):
        super().__init__(attempt.key)
        self.attempt = attempt


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
        attempt = Attempt.of(key, operation, request)
        if await self._claim(session, attempt):
            body = (await action()).model_dump(mode="json")
            await session.execute(
                update(self.table).where(self.table.c.key == key).values(status_code=status_code, response=body)
            )
            return Outcome(status_code, body)
        return await self._replayed(session, attempt)

    async def recorded(self, session: AsyncSession, attempt: Attempt) -> Outcome | None:
        """The committed answer to `attempt`'s key (None while it is unused); IdempotencyConflict if the key
        answered another request."""
        stored = (await session.execute(select(self.table).where(self.table.c.key == attempt.key))).first()
        return None if stored is None else _replay(stored, attempt)

    async def record(self, session: AsyncSession, attempt: Attempt, status_code: int, body: dict[str, Any]) -> None:
        """Claims the key with its answer, known in advance, in the operation's transaction: the first statement,
        so concurrent attempts queue on the key before any other lock. KeyTakenMeanwhile when an attempt that
        committed first holds it."""
        if not await self._claim(session, attempt, status_code=status_code, response=body):
            raise KeyTakenMeanwhile(attempt)

    async def _replayed(self, session: AsyncSession, attempt: Attempt) -> Outcome:
        return _replay(
            (await session.execute(select(self.table).where(self.table.c.key == attempt.key))).one(), attempt
        )

    async def _claim(self, session: AsyncSession, attempt: Attempt, **answer: Any) -> bool:
        """True if this transaction now owns the key; waits while another uncommitted transaction owns it."""
        stmt = (
            pg_insert(self.table)
            .values(key=attempt.key, operation=attempt.operation, request_hash=attempt.digest, **answer)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(self.table.c.key)
        )
        return (await session.execute(stmt)).first() is not None


def _replay(stored: Row[Any], attempt: Attempt) -> Outcome:
    if stored.request_hash != attempt.digest or stored.status_code is None or stored.response is None:
        raise IdempotencyConflict()
    return Outcome(stored.status_code, stored.response, replayed=True)
