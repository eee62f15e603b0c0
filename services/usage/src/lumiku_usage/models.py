"""Usage rows (partitioned by month), the rollups that answer summaries without scanning them, and the
projection of avatar ownership fed by `avatar.created` / `avatar.deleted`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lumiku_common.db import new_metadata
from lumiku_common.idempotency import USER_SCOPED_KEY_LENGTH, idempotency_table

PARTITION_PREFIX = "usage_events_p"  # usage_events_p202611: November 2026 (UTC)
DEFAULT_PARTITION = "usage_events_default"


class Base(DeclarativeBase):
    metadata = new_metadata()


class UsageEvent(Base):
    """One use of an avatar. Partitioned by month of `created_at`: the primary key includes it."""

    __tablename__ = "usage_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    avatar_id: Mapped[str] = mapped_column(String(64), nullable=False)
    app_id: Mapped[str] = mapped_column(String(50), nullable=False)
    app_name: Mapped[str] = mapped_column(String(100), nullable=False)
    action: Mapped[str] = mapped_column(String(50), nullable=False)
    reference_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reference_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB, nullable=True)

    __table_args__ = (
        # History pages (newest first, keyset) and their filters; PostgreSQL scans it backwards.
        Index("ix_usage_events_avatar_time", "avatar_id", "created_at", "id"),
        # The caller's rows by time (CSV export) and deletion by avatar.
        Index("ix_usage_events_user_time", "user_id", "created_at"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


class UsageTotal(Base):
    """Per avatar and app: how many uses and the latest; the summary reads these few rows."""

    __tablename__ = "usage_totals"

    avatar_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(50), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    uses: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class UsageHour(Base):
    """Per user, hour (UTC), avatar and app: the analytics' time series, app totals and top avatars."""

    __tablename__ = "usage_hours"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    avatar_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(50), primary_key=True)
    uses: Mapped[int] = mapped_column(Integer, nullable=False)

    __table_args__ = (Index("ix_usage_hours_avatar", "avatar_id"),)


class KnownAvatar(Base):
    """Who owns which avatar, from avatars' events; a deleted avatar stays as a tombstone so a late event
    (an `avatar.used`, or an `avatar.created` that arrives after its deletion) cannot bring it back."""

    __tablename__ = "known_avatars"

    avatar_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


idempotency_keys = idempotency_table(Base.metadata, key_length=USER_SCOPED_KEY_LENGTH)  # per user
