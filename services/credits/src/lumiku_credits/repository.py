"""SQL of the credits service. Every money decision reads what it needs *after* taking the wallet lock."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from lumiku_credits.models import Hold, LedgerEntry, Wallet

# Run as its own statement once the wallet row is locked: in READ COMMITTED a new statement takes a new
# snapshot, so it sees every hold committed by the transactions that held the lock before us (a CTE in
# the locking statement would read the older snapshot and double-spend). clock_timestamp(), not now():
# expiry is judged at the moment the lock is held, so transactions judge it in lock order.
_HELD_AFTER_LOCK = text(
    """
    SELECT t.now, coalesce(sum(h.amount), 0)::bigint AS held
      FROM (SELECT clock_timestamp() AS now) t
      LEFT JOIN holds h ON h.user_id = :user_id AND h.status = 'active' AND h.expires_at > t.now
     GROUP BY t.now
    """
)

# One snapshot for both numbers, so a read never shows a hold and its capture at once.
_BALANCE_AND_HELD = text(
    """
    SELECT w.balance,
           (SELECT coalesce(sum(h.amount), 0)::bigint FROM holds h
             WHERE h.user_id = w.user_id AND h.status = 'active' AND h.expires_at > clock_timestamp()) AS held
      FROM wallets w WHERE w.user_id = :user_id
    """
)

_EXPIRE_DUE = text(
    """
    UPDATE holds SET status = 'expired', reason = 'expired', settled_at = clock_timestamp()
     WHERE id IN (SELECT id FROM holds
                   WHERE status = 'active' AND expires_at <= clock_timestamp()
                   ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING id, user_id, amount, reference_id, reference_type
    """
)


class CreditsRepository:
    def __init__(self, session: AsyncSession):
        self.session = session

    async def active_hold_counts(self) -> tuple[int, int]:
        """Active holds (the partial index): (not yet expired, past their expiry but not yet swept)."""
        now = func.clock_timestamp()
        live, overdue = (
            await self.session.execute(
                select(func.count().filter(Hold.expires_at > now), func.count().filter(Hold.expires_at <= now)).where(
                    Hold.status == "active"
                )
            )
        ).one()
        return int(live), int(overdue)

    # --- wallets ------------------------------------------------------------------------------------

    async def wallet_exists(self, user_id: str) -> bool:
        return await self.session.scalar(select(Wallet.user_id).where(Wallet.user_id == user_id)) is not None

    async def open_wallet(self, user_id: str) -> bool:
        """True only for the one transaction that created the wallet, however many race to."""
        stmt = pg_insert(Wallet).values(user_id=user_id).on_conflict_do_nothing().returning(Wallet.user_id)
        return (await self.session.execute(stmt)).first() is not None

    async def lock_wallet(self, user_id: str) -> int | None:
        """The balance, with the wallet row locked until commit; None if the user has no wallet yet."""
        balance = await self.session.scalar(select(Wallet.balance).where(Wallet.user_id == user_id).with_for_update())
        return None if balance is None else int(balance)

    async def held_after_lock(self, user_id: str) -> tuple[datetime, int]:
        row = (await self.session.execute(_HELD_AFTER_LOCK, {"user_id": user_id})).one()
        return row.now, int(row.held)

    async def balance_and_held(self, user_id: str) -> tuple[int, int]:
        row = (await self.session.execute(_BALANCE_AND_HELD, {"user_id": user_id})).one()
        return int(row.balance), int(row.held)

    # --- ledger -------------------------------------------------------------------------------------

    async def append(self, **values: Any) -> LedgerEntry:
        """Appends an entry; the database moves the wallet and fills `balance_after`."""
        stmt = insert(LedgerEntry).values(**values).returning(LedgerEntry)
        return (await self.session.scalars(stmt)).one()

    def entries_query(
        self, user_id: str, type_: str | None, since: datetime | None, until: datetime | None
    ) -> Select[LedgerEntry]:
        query = select(LedgerEntry).where(LedgerEntry.user_id == user_id)
        if type_ is not None:
            query = query.where(LedgerEntry.type == type_)
        if since is not None:
            query = query.where(LedgerEntry.created_at >= since)
        if until is not None:
            query = query.where(LedgerEntry.created_at <= until)
        return query.order_by(LedgerEntry.seq.desc())

    async def entries(self, query: Select[LedgerEntry], offset: int, limit: int) -> list[LedgerEntry]:
        return list((await self.session.scalars(query.offset(offset).limit(limit))).all())

    async def count(self, query: Select[LedgerEntry]) -> int:
        total = await self.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
        return int(total or 0)

    # --- holds --------------------------------------------------------------------------------------

    async def add_hold(self, **values: Any) -> Hold:
        return (await self.session.scalars(insert(Hold).values(**values).returning(Hold))).one()

    async def hold_owner(self, hold_id: str) -> str | None:
        return await self.session.scalar(select(Hold.user_id).where(Hold.id == hold_id))

    async def lock_hold(self, hold_id: str) -> tuple[Hold, datetime]:
        """The hold, locked, and the database clock read after the caller took the wallet lock."""
        stmt = (
            select(Hold, func.clock_timestamp())
            .where(Hold.id == hold_id)
            .with_for_update(of=Hold)
            .execution_options(populate_existing=True)
        )
        hold, now = (await self.session.execute(stmt)).one()
        return hold, now

    async def expire_due(self, limit: int) -> list[Any]:
        return list((await self.session.execute(_EXPIRE_DUE, {"limit": limit})).all())
