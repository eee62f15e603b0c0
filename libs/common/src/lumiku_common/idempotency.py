"""Exactly-once operations, for every service that takes idempotency keys: a key is claimed by a UNIQUE
insert, and a committed answer is replayed, never re-run: the same status and the same JSON value (not byte for
byte: the answer is kept as jsonb, which orders an object's keys its own way). Another request under a used key
is 409.

An operation wholly inside one transaction runs in `Idempotency.once`: the claim and the operation's effects
commit together or not at all, so a failed attempt (402, 409, a crash) leaves the key free for a retry, and a
concurrent attempt with the same key waits on the first one's row lock, then replays or conflicts.

An operation with effects outside its transaction (objects stored, credits held over HTTP) `claim`s the key
before any of them, in a transaction of its own, so that a retry arriving while it runs is told so
(KeyInProgress, 409 with Retry-After) instead of paying again; its own transaction then `record`s the answer,
and a failed attempt `release`s the claim. A claim whose attempt died is taken over after `takeover_after`;
the attempt it was taken from, should it still come to commit, finds its claim gone (KeyTakenMeanwhile) and
undoes itself, so one attempt at most ever commits.

A service adds the table to its own metadata (`idempotency_table(Base.metadata)`), migrates it like any other
of its tables and prunes it (`key_retention`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StringConstraints
from sqlalchemy import Column, DateTime, MetaData, Select, SmallInteger, String, Table, delete, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_common.auth import MAX_USER_ID_LENGTH
from lumiku_common.db import Database, utcnow
from lumiku_common.errors import Conflict
from lumiku_common.ids import new_id
from lumiku_common.logs import get_logger
from lumiku_common.retention import Retention
from lumiku_common.schemas import CleanStr
from lumiku_common.settings import ServiceSettings

log = get_logger(__name__)
T = TypeVar("T")

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
_SCOPE = "\x1f"  # in neither a user id nor a key (both printable): "<user><US><key>" names one pair only


def user_scoped(user_id: str, key: str) -> str:
    return f"{user_id}{_SCOPE}{key}"


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
        Column("claim", String(32), nullable=True),  # the attempt holding an unanswered key (`Idempotency.claim`)
    )


# The OpenAPI of a write's success answer, which may be a replay.
_REPLAYED_DOC = {"description": "`true` when this answers a replayed Idempotency-Key", "schema": {}}
REPLAYABLE = {"headers": {REPLAYED_HEADER: _REPLAYED_DOC}}


def replayed_headers(replayed: bool) -> dict[str, str] | None:
    return {REPLAYED_HEADER: "true"} if replayed else None


class IdempotencyConflict(Conflict):
    message = "Idempotency key already used with a different request"


class KeyInProgress(Conflict):
    message = "A request with this Idempotency-Key is still in progress"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


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
    """One request under a key: what a stored answer is compared with."""

    key: str
    operation: str
    digest: str

    @classmethod
    def of(cls, key: str, operation: str, request: dict[str, Any]) -> Attempt:
        return cls(key, operation, request_hash(operation, request))


@dataclass(frozen=True)
class Claim:
    """An attempt's hold on its key, from `Idempotency.claim` until it records its answer or releases it."""

    attempt: Attempt
    token: str


class KeyTakenMeanwhile(Exception):
    """The claim was taken over (its attempt looked dead): roll back, undo what was done outside the
    transaction, and answer what `recorded` returns (`guarded` does)."""


# How often a claim meets a key that is released before it can be read, before answering "in progress".
_CLAIM_TRIES = 3


class Idempotency:
    def __init__(self, table: Table, takeover_after: timedelta = timedelta(minutes=1)):
        self.table = table
        self.takeover_after = takeover_after

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
        if await self._insert(session, attempt):
            body = (await action()).model_dump(mode="json")
            await session.execute(
                update(self.table).where(self.table.c.key == key).values(status_code=status_code, response=body)
            )
            return Outcome(status_code, body)
        return _replay((await session.execute(self._row(attempt))).one(), attempt)

    async def claim(self, db: Database, attempt: Attempt) -> Outcome | Claim:
        """Before any effect outside the database: the answer of an attempt that finished (a replay), or this
        attempt's claim, committed at once. KeyInProgress while another attempt holds the key,
        IdempotencyConflict for a key used with another request."""
        token = new_id()
        for _ in range(_CLAIM_TRIES):
            async with db.unit_of_work() as session:
                if await self._insert(session, attempt, claim=token):
                    return Claim(attempt, token)
                stored = (await session.execute(self._row(attempt).with_for_update())).first()
                if stored is None:  # released (its attempt failed) since the insert met it: claim it again
                    continue
                if stored.request_hash != attempt.digest or stored.status_code is not None:
                    return _replay(stored, attempt)
                if stored.created_at > utcnow() - self.takeover_after:
                    raise KeyInProgress()
                log.warning("idempotency_claim_taken_over", operation=attempt.operation, claimedAt=stored.created_at)
                await session.execute(
                    update(self.table).where(self.table.c.key == attempt.key).values(claim=token, created_at=func.now())
                )
            return Claim(attempt, token)
        raise KeyInProgress()  # claimed and released again each time: other attempts are busy with this key

    async def record(self, session: AsyncSession, claim: Claim, status_code: int, body: dict[str, Any]) -> None:
        """In the operation's own transaction, before its other writes: the claim becomes the answer.
        KeyTakenMeanwhile when the claim was taken over."""
        t = self.table
        result = await session.execute(
            update(t)
            .where(t.c.key == claim.attempt.key, t.c.claim == claim.token, t.c.status_code.is_(None))
            .values(status_code=status_code, response=body, claim=None)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise KeyTakenMeanwhile(claim.attempt.key)

    async def release(self, db: Database, claim: Claim) -> None:
        """After a failed attempt, the key is free for a retry. Best effort: a claim left behind is taken over
        after `takeover_after`."""
        t = self.table
        try:
            async with db.unit_of_work() as session:
                await session.execute(
                    delete(t).where(t.c.key == claim.attempt.key, t.c.claim == claim.token, t.c.status_code.is_(None))
                )
        except Exception as exc:
            log.warning("idempotency_release_failed", operation=claim.attempt.operation, error=repr(exc))

    async def guarded(
        self,
        db: Database,
        attempt: Attempt,
        run: Callable[[Claim], Awaitable[T]],
        replay: Callable[[Outcome], Awaitable[T]],
    ) -> T:
        """`run` once per key, for an operation with effects outside its transaction: `run` records its answer
        (`record`) in that transaction and undoes its outside effects when it fails; `replay` turns a stored
        answer into the result, for a retry and for an attempt whose claim was taken over."""
        claimed = await self.claim(db, attempt)
        if isinstance(claimed, Outcome):
            return await replay(claimed)
        try:
            return await run(claimed)
        except KeyTakenMeanwhile:  # this attempt was undone; the one that took its key over answers
            async with db.unit_of_work() as session:
                outcome = await self.recorded(session, attempt)
            if outcome is None:  # that one failed too: the key is free for the client's next retry
                raise KeyInProgress() from None
            return await replay(outcome)
        except BaseException:
            await asyncio.shield(self.release(db, claimed))
            raise

    async def recorded(self, session: AsyncSession, attempt: Attempt) -> Outcome | None:
        """The answer to `attempt`'s key, for the attempt that lost it: None if the key is free again,
        KeyInProgress while another attempt holds it, IdempotencyConflict if it answered another request."""
        stored = (await session.execute(self._row(attempt))).first()
        if stored is None:
            return None
        if stored.request_hash == attempt.digest and stored.status_code is None:
            raise KeyInProgress()
        return _replay(stored, attempt)

    def _row(self, attempt: Attempt) -> Select[Any]:
        return select(self.table).where(self.table.c.key == attempt.key)

    async def _insert(self, session: AsyncSession, attempt: Attempt, **columns: Any) -> bool:
        """True if this transaction now owns the key; waits while another uncommitted transaction owns it."""
        stmt = (
            pg_insert(self.table)
            .values(key=attempt.key, operation=attempt.operation, request_hash=attempt.digest, **columns)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(self.table.c.key)
        )
        return (await session.execute(stmt)).first() is not None


def _replay(stored: Row[Any], attempt: Attempt) -> Outcome:
    if stored.request_hash != attempt.digest or stored.status_code is None or stored.response is None:
        raise IdempotencyConflict()
    return Outcome(stored.status_code, stored.response, replayed=True)
