"""Generation jobs, their images and the log of what happened to them (the SSE stream replays it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lumiku_common.db import TimestampMixin, new_metadata, utcnow
from lumiku_common.idempotency import USER_SCOPED_KEY_LENGTH, idempotency_table

TERMINAL = frozenset({"succeeded", "partially_succeeded", "failed", "canceled"})
ACTIVE = ("queued", "running")


class Base(DeclarativeBase):
    metadata = new_metadata()


class Generation(TimestampMixin, Base):
    """One generate request: `count` images, paid from `hold_ids` (one credit hold per image, the first one the
    first image's price). A terminal status never changes; `settled` once every hold is captured or released."""

    __tablename__ = "generations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    project_id: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    count: Mapped[int] = mapped_column(Integer, nullable=False)
    produced: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    cost: Mapped[int] = mapped_column(Integer, nullable=False)
    charged: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    refunded: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The validated request (prompt, name, attributes) and what the provider is sent.
    request: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    enhanced_prompt: Mapped[str] = mapped_column(Text, nullable=False)
    hold_ids: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    settled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dispatched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    deadline: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    runs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # claims by a worker
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_generations_user_created", "user_id", "created_at"),
        Index("ix_generations_project", "project_id"),
        # Sweeps and the per-user limit look at unfinished work only.
        Index("ix_generations_active", "status", "user_id", postgresql_where=text("status IN ('queued', 'running')")),
        Index("ix_generations_unsettled", "id", postgresql_where=text("NOT settled")),
    )


class GenerationImage(Base):
    """One variation. pending → received (the provider's bytes kept here) → storing (a hold is assigned; the
    avatar may exist) → stored (the avatar exists and pays that hold); or failed. Its id is the avatar's id."""

    __tablename__ = "generation_images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("generations.id", ondelete="CASCADE"), nullable=False
    )
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    hold_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    avatar: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ux_generation_images_index", "generation_id", "index", unique=True),)


class GenerationEvent(Base):
    """What the SSE stream shows, in order: `seq` is the event's id (Last-Event-ID resumes after it)."""

    __tablename__ = "generation_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    generation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("generations.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)

    __table_args__ = (Index("ux_generation_events_seq", "generation_id", "seq", unique=True),)


class DeletedProject(Base):
    """Projects whose `project.deleted` was handled: their jobs are deleted once their money is settled."""

    __tablename__ = "deleted_projects"

    project_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


# The `Idempotency-Key`s of submitted generations, per user; each answer names its job.
idempotency_keys = idempotency_table(Base.metadata, key_length=USER_SCOPED_KEY_LENGTH)
