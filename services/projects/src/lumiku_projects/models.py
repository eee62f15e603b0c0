from __future__ import annotations

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lumiku_common.db import TimestampMixin, new_metadata
from lumiku_common.idempotency import USER_SCOPED_KEY_LENGTH, idempotency_table
from lumiku_common.ids import new_id


class Base(DeclarativeBase):
    metadata = new_metadata()


class Project(TimestampMixin, Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(128), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_projects_user_created", "user_id", "created_at"),)


# The `Idempotency-Key`s of project creations, per user.
idempotency_keys = idempotency_table(Base.metadata, key_length=USER_SCOPED_KEY_LENGTH)
