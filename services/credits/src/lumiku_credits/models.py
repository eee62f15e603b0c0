"""Wallets, the append-only ledger, holds and idempotency keys.

The database owns the money invariants, not Python:
- a ledger insert moves the wallet balance itself (trigger `ledger_entries_apply`), so
  balance == SUM(ledger amounts) holds by construction and `balance_after` is always the running balance;
- ledger rows can never be updated or deleted (trigger `ledger_entries_append_only`);
- CHECKs keep balances non-negative and amounts within range; a hold is captured by at most one entry;
- an idempotency key is claimed by a UNIQUE insert, never by a read.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lumiku_common.clients.credits import MAX_AMOUNT
from lumiku_common.db import new_metadata
from lumiku_common.idempotency import idempotency_table
from lumiku_common.ids import new_id

ENTRY_TYPES = ("purchase", "bonus", "usage", "refund", "adjustment")
HOLD_STATUSES = ("active", "captured", "released", "expired")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = new_metadata()


class Wallet(Base):
    __tablename__ = "wallets"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # Per-user order of entries is commit order (inserts are serialised by the wallet lock): `seq` sorts them.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    user_id: Mapped[str] = mapped_column(ForeignKey("wallets.user_id"), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # Set by the `ledger_entries_apply` trigger from the wallet it updates; never supplied by the caller.
    balance_after: Mapped[int] = mapped_column(BigInteger, nullable=False)
    type: Mapped[str] = mapped_column(String(20), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    reference_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reference_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    hold_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # "<operation>:<client key>": the longest prefix ("capture:") on the longest key a client may send (200).
    idempotency_key: Mapped[str | None] = mapped_column(String(220), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        CheckConstraint(_in("type", ENTRY_TYPES), name="type_known"),
        Index("ix_ledger_entries_user_seq", "user_id", "seq"),
        # A hold is paid for by at most one ledger entry, whatever the callers do.
        Index("ux_ledger_entries_hold_id", "hold_id", unique=True, postgresql_where=text("hold_id IS NOT NULL")),
    )


class Hold(Base):
    __tablename__ = "holds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("wallets.user_id"), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False, server_default=text("'active'"))
    reference_id: Mapped[str] = mapped_column(String(200), nullable=False)
    reference_type: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    captured_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        CheckConstraint(f"amount > 0 AND amount <= {MAX_AMOUNT}", name="amount_in_range"),
        CheckConstraint(_in("status", HOLD_STATUSES), name="status_known"),
        CheckConstraint(
            "(status = 'captured') = (captured_amount IS NOT NULL)"
            " AND coalesce(captured_amount, 1) BETWEEN 1 AND amount",
            name="captured_amount_valid",
        ),
        # Reserving sums a user's active holds under the wallet lock; this keeps that sum an index scan.
        Index("ix_holds_active_user", "user_id", "expires_at", postgresql_where=text("status = 'active'")),
        Index("ix_holds_active_expiry", "expires_at", postgresql_where=text("status = 'active'")),
    )


# Claimed by the operation's own transaction (lumiku_common.idempotency).
idempotency_keys = idempotency_table(Base.metadata)
