"""Database per service: async engine, a unit of work per request/message, and database bootstrap.

Services and repositories never commit: the request (or message) scope commits once at the end, so a
state change and the events it causes land together or not at all. Hot reads that change nothing run a
`Query` with `Database.fetch` instead: one statement on a pooled connection's asyncpg connection, without
BEGIN/COMMIT (each statement of a transaction at READ COMMITTED sees its own snapshot anyway, so a read of
several statements loses no guarantee). Hot writes of a few statements run in a `DriverWork` the same way:
its `Query`s and staged events in one transaction on the asyncpg connection, committed by the request scope
too (`DriverWorkDep`); the session's machinery cost twice the statements themselves.

A connection is pinged only when it comes out of the pool after sitting idle (`PING_AFTER_IDLE_SECONDS`): a
ping per checkout was a round trip per request. One found dead then is replaced before use (the pool retries
the checkout); one that dies while busy fails its request with 503 and the pool reconnects for the next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence, Set
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from lumiku_common.errors import is_unavailable

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, nullable=False
    )


def apply_changes(entity: object, changes: dict[str, Any], clearable: Set[str] = frozenset()) -> bool:
    """A partial update: sets what differs; "" clears the `clearable` fields. False when nothing changed, so
    callers can skip the write and its event."""
    changes = {k: (v or None) if k in clearable else v for k, v in changes.items()}
    changed = {k: v for k, v in changes.items() if getattr(entity, k) != v}
    for key, value in changed.items():
        setattr(entity, key, value)
    return bool(changed)


PING_AFTER_IDLE_SECONDS = 10.0
IDLE_SINCE = "idle_since"  # in a pooled connection's info
RECYCLE_SECONDS = 1800  # below the idle timeouts of the usual proxies and load balancers in front of PostgreSQL


def ping_when_idle(engine: Engine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Pre-ping only the connections idle for `idle_seconds`; a dead one is discarded and the checkout retried
    with a new connection (what `pool_pre_ping` does on every checkout)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_: Any, record: ConnectionPoolEntry) -> None:
        record.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
        idle_since = record.info.pop(IDLE_SINCE, None)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("connection found dead after idling") from exc


async def lock_name(session: AsyncSession, name: str) -> None:
    """Serialises, until this transaction ends, the transactions that lock the same `name` (a PostgreSQL
    advisory lock on its 64-bit hash: no row needs to exist)."""
    await session.execute(_LOCK_NAME, {"name": name})


_LOCK_NAME = text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))")


class Query:
    """A Core statement compiled once, at import, to PostgreSQL's SQL for asyncpg, its values bound by name
    (`bindparam("user_id")`). Run with `Database.fetch`: asyncpg prepares it once per connection and keeps it,
    and a request pays no statement building, cache-key lookup or result processing (SQLAlchemy's execution
    path was a fifth of a simple read's CPU)."""

    _dialect = PGDialect_asyncpg()

    def __init__(self, statement: ClauseElement):
        compiled = statement.compile(dialect=self._dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.names: Sequence[str] = compiled.positiontup or ()  # the bound names in $1, $2... order

    def args(self, values: dict[str, Any]) -> list[Any]:
        return [values[name] for name in self.names]

    async def fetch(self, connection: asyncpg.Connection, **values: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await connection.fetch(self.sql, *self.args(values))
        return rows

    async def fetchrow(self, connection: asyncpg.Connection, **values: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await connection.fetchrow(self.sql, *self.args(values))
        return row

    async def execute(self, connection: asyncpg.Connection, **values: Any) -> str:
        status: str = await connection.execute(self.sql, *self.args(values))
        return status


class DriverWork:
    """A unit of work on a driver connection (`Database.driver_work`), for hot writes: its `Query`s run in one
    transaction, begun by the first of them (a request refused before any costs the database nothing) and
    committed when the block ends, or rolled back on an exception. Stage its events with `outbox.add_event`."""

    def __init__(self, db: Database):
        self.source, self.notify_outbox = db.source, db.notify_outbox  # for the envelopes of its events
        self.outbox_written = False
        self._db, self._connection, self._stack = db, None, AsyncExitStack()

    async def fetch(self, query: Query, **values: Any) -> list[asyncpg.Record]:
        return await query.fetch(await self._begun(), **values)

    async def fetchrow(self, query: Query, **values: Any) -> asyncpg.Record | None:
        return await query.fetchrow(await self._begun(), **values)

    async def execute(self, query: Query, **values: Any) -> str:
        return await query.execute(await self._begun(), **values)

    async def _begun(self) -> asyncpg.Connection:
        if self._connection is None:
            connection = await self._stack.enter_async_context(self._db.driver())
            await self._stack.enter_async_context(connection.transaction())
            self._connection = connection
        return self._connection

    async def __aenter__(self) -> DriverWork:
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._stack.__aexit__(*exc_info)  # commit or roll back, then the connection goes back


@dataclass(slots=True)
class _HeldConnection:
    connection: PoolProxiedConnection
    since: float  # out of the pool since
    used: float  # last given back


class _Held:
    """The connections hot reads keep between uses instead of returning them to the pool: a checkout through
    SQLAlchemy's pool (a greenlet switch, the pool's queue, its checkout and checkin events, the reset on
    return) cost a third of a simple read's CPU. At most `size` are kept (half the pool's usual size: the rest
    stays free for units of work); one unused for `PING_AFTER_IDLE_SECONDS` or kept for `HOLD_SECONDS` in all
    goes back to the pool, so the pool's idle ping and recycling still apply to it on its next checkout."""

    HOLD_SECONDS = 60.0

    def __init__(self, size: int):
        self.size = size
        self.idle: list[_HeldConnection] = []

    def take(self) -> _HeldConnection | None:
        now = time.monotonic()
        while self.idle:
            held = self.idle.pop()  # the most recently used: the likeliest to be alive and warm
            if now - held.used < PING_AFTER_IDLE_SECONDS and now - held.since < self.HOLD_SECONDS:
                return held
            self._give_back(held)
        return None

    def keep(self, connection: PoolProxiedConnection, since: float) -> bool:
        if len(self.idle) >= self.size:
            return False
        self.idle.append(_HeldConnection(connection, since, time.monotonic()))
        return True

    def release(self) -> None:
        while self.idle:
            self._give_back(self.idle.pop())

    @staticmethod
    def _give_back(held: _HeldConnection) -> None:
        info = held.connection.info
        held.connection.close()
        info[IDLE_SINCE] = held.used  # idle since its last use, not since now: the pool pings it if that was long


class Database:
    def __init__(self, url: str, source: str, pool_size: int = 10, notify_outbox: bool = False):
        self.url, self.source, self.notify_outbox = url, source, notify_outbox
        # At most 2 x pool_size connections, the cap pool_size + overflow had, but opened lazily and kept once
        # open: an overflow connection was closed when returned, so a burst above pool_size in-flight requests
        # reconnected (TCP, TLS attempt, authentication) on every request it lasted.
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=2 * pool_size, max_overflow=0, pool_recycle=RECYCLE_SECONDS
        )
        ping_when_idle(self.engine.sync_engine)
        # `source` names this service in the envelopes of the events its sessions stage.
        self.sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, info={"source": source, "notify_outbox": notify_outbox}
        )
        # Set after a commit that wrote outbox rows, so the relay publishes at once instead of at next poll.
        self.outbox_signal = asyncio.Event()
        self._held = _Held(max(1, pool_size // 2))

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
            if session.info.pop("outbox_written", False):
                self.outbox_signal.set()

    @asynccontextmanager
    async def driver_work(self) -> AsyncIterator[DriverWork]:
        """A transaction on a driver connection (see `driver`), for hot writes; commits when the block ends."""
        async with DriverWork(self) as work:
            yield work
        if work.outbox_written:
            self.outbox_signal.set()

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection's asyncpg connection, outside any transaction. A few stay out of the pool between
        hot reads (`_Held`); the rest are checked out and returned like any other (the idle ping, the recycling
        and the pool's bound apply). One that fails because the connection is lost, or is interrupted
        mid-statement, is discarded instead of going back."""
        held = self._held.take()
        connection = held.connection if held is not None else await self.engine.raw_connection()
        since = held.since if held is not None else time.monotonic()
        try:
            yield connection.driver_connection
        except BaseException as exc:
            if not isinstance(exc, Exception) or is_unavailable(exc):
                connection.invalidate(exc)  # out of a greenlet: closed at once, not gracefully
            raise
        finally:
            if connection.is_valid and not self._held.keep(connection, since):
                connection.close()  # no transaction to roll back: back to the pool without a round trip

    async def fetch(self, query: Query, **values: Any) -> list[asyncpg.Record]:
        async with self.driver() as conn:
            return await query.fetch(conn, **values)

    async def fetchrow(self, query: Query, **values: Any) -> asyncpg.Record | None:
        async with self.driver() as conn:
            return await query.fetchrow(conn, **values)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        self._held.release()
        await self.engine.dispose()


async def ensure_database(url: str) -> None:
    """Create the service's database if it does not exist (development and tests)."""
    parsed = make_url(url)
    server = parsed.set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(server.render_as_string(hide_password=False))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", parsed.database)
        if not exists:
            # Another process may create it first; that is fine.
            # Concurrent CREATEs surface as a unique violation on pg_database, not DuplicateDatabase.
            with suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f'CREATE DATABASE "{parsed.database}"')
    finally:
        await conn.close()


async def _database(request: Request) -> Database:  # async: inline, not in a thread
    db: Database = request.app.state.db
    return db


DatabaseDep = Annotated[Database, Depends(_database)]


async def _request_session(db: DatabaseDep) -> AsyncIterator[AsyncSession]:
    async with db.unit_of_work() as session:
        yield session


# scope="function": commit before the response is sent, so a 201 always means "committed".
DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]


async def _request_driver_work(db: DatabaseDep) -> AsyncIterator[DriverWork]:
    async with db.driver_work() as work:
        yield work


# As DbSession, on the driver connection: committed before the response is sent.
DriverWorkDep = Annotated[DriverWork, Depends(_request_driver_work, scope="function")]
