"""The outbox and inbox tables, present in every service's database (each service migrates its own copy)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB

from lumiku_common.db import new_metadata

messaging_metadata = new_metadata()

outbox = Table(
    "outbox",
    messaging_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False, unique=True),
    Column("routing_key", String(200), nullable=False),
    Column("body", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    # Only unpublished rows are ever scanned; the partial index keeps that scan small forever.
    Index("ix_outbox_pending", "id", postgresql_where=text("published_at IS NULL")),
)

inbox = Table(
    "inbox",
    messaging_metadata,
    Column("consumer", String(200), primary_key=True),
    Column("event_id", String(64), primary_key=True),
    Column("event_type", String(200), nullable=False),
    Column("handled_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
