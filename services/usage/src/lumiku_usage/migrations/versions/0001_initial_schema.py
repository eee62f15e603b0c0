"""initial schema: usage rows partitioned by month (+ a default partition), rollups, the avatar ownership
projection, idempotency keys, outbox and inbox

Revision ID: 0001
Revises:
Create Date: 2026-11-29 04:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("avatar_id", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.String(length=50), nullable=False),
        sa.Column("app_name", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("reference_id", sa.String(length=200), nullable=True),
        sa.Column("reference_type", sa.String(length=200), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("id", "created_at", name=op.f("pk_usage_events")),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index("ix_usage_events_avatar_time", "usage_events", ["avatar_id", "created_at", "id"], unique=False)
    op.create_index("ix_usage_events_user_time", "usage_events", ["user_id", "created_at"], unique=False)
    # Rows of a month without its partition yet (the keeper creates months ahead; this is the safety net).
    op.execute("CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT")
    op.create_table(
        "usage_totals",
        sa.Column("avatar_id", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.String(length=50), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("uses", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("avatar_id", "app_id", name=op.f("pk_usage_totals")),
    )
    op.create_table(
        "usage_hours",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("avatar_id", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.String(length=50), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "hour", "avatar_id", "app_id", name=op.f("pk_usage_hours")),
    )
    op.create_index("ix_usage_hours_avatar", "usage_hours", ["avatar_id"], unique=False)
    op.create_table(
        "known_avatars",
        sa.Column("avatar_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("avatar_id", name=op.f("pk_known_avatars")),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(length=329), nullable=False),
        sa.Column("operation", sa.String(length=20), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=True),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=200), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_inbox")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("routing_key", sa.String(length=200), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    op.create_index(
        "ix_outbox_pending", "outbox", ["id"], unique=False, postgresql_where=sa.text("published_at IS NULL")
    )


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("inbox")
    op.drop_table("idempotency_keys")
    op.drop_table("known_avatars")
    op.drop_table("usage_hours")
    op.drop_table("usage_totals")
    op.drop_table("usage_events")  # and every partition
