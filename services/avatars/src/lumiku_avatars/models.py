from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lumiku_common.db import TimestampMixin, new_metadata, utcnow
from lumiku_common.idempotency import USER_SCOPED_KEY_LENGTH, idempotency_table
from lumiku_common.ids import new_id


class Base(DeclarativeBase):
    metadata = new_metadata()


class Avatar(TimestampMixin, Base):
    __tablename__ = "avatars"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    project_id: Mapped[str] = mapped_column(String(32), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)

    # Storage keys, never URLs: URLs are signed per response and expire.
    base_image_key: Mapped[str] = mapped_column(String(512), nullable=False)
    thumbnail_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    image_width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_height: Mapped[int | None] = mapped_column(Integer, nullable=True)

    gender: Mapped[str | None] = mapped_column(String(20), nullable=True)
    age_range: Mapped[str | None] = mapped_column(String(20), nullable=True)
    style: Mapped[str | None] = mapped_column(String(20), nullable=True)
    ethnicity: Mapped[str | None] = mapped_column(String(50), nullable=True)
    body_type: Mapped[str | None] = mapped_column(String(20), nullable=True)

    generation_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    source_type: Mapped[str] = mapped_column(String(20), nullable=False)

    persona_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    persona_age: Mapped[int | None] = mapped_column(Integer, nullable=True)
    persona_personality: Mapped[str | None] = mapped_column(Text, nullable=True)
    persona_background: Mapped[str | None] = mapped_column(Text, nullable=True)
    hair_style: Mapped[str | None] = mapped_column(String(50), nullable=True)
    hair_color: Mapped[str | None] = mapped_column(String(50), nullable=True)
    eye_color: Mapped[str | None] = mapped_column(String(50), nullable=True)
    skin_tone: Mapped[str | None] = mapped_column(String(50), nullable=True)
    seed_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    usage_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_avatars_user_created", "user_id", "created_at"),
        Index("ix_avatars_project_created", "project_id", "created_at"),
    )


class ObjectDeletion(Base):
    """Objects to remove once the transaction that deleted their avatar has committed."""

    __tablename__ = "object_deletions"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class CountedUsage(Base):
    """Usage ids already counted, so a usage republished under a new event id is not counted twice."""

    __tablename__ = "counted_usages"

    usage_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    avatar_id: Mapped[str] = mapped_column(String(32), nullable=False)
    counted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class GivenUpImage(Base):
    """Generation images their job gave up on (a store cut short, settled by a cancel, the sweep or the job's
    deadline): a create of one of them still in flight is refused, for its credit hold is being released."""

    __tablename__ = "given_up_images"

    image_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    given_up_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class DeletedGeneratedAvatar(Base):
    """AI avatars deleted since they were made, as they were. A generation image becomes an avatar once: a late
    retry of its create (a worker that never heard the answer) or the settling of its job must find it made and
    paid for, not make it again nor count its hold as unused."""

    __tablename__ = "deleted_generated_avatars"

    avatar_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    avatar: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)  # its row, as `Avatar.columns` gives it
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class DeletedProject(Base):
    """Projects whose `project.deleted` was handled: an upload that passed the ownership check just before the
    deletion must not create an avatar in a project that no longer exists."""

    __tablename__ = "deleted_projects"

    project_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


# The `Idempotency-Key`s of avatar creations (upload, save-preview), per user; each answer names its avatar.
idempotency_keys = idempotency_table(Base.metadata, key_length=USER_SCOPED_KEY_LENGTH)
