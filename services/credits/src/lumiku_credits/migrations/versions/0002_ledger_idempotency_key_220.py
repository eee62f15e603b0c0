"""ledger idempotency key fits its prefix

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 02:50:00.000000

The ledger stores "<operation>:<client key>" ("grant:", "capture:"), and a client key may be 200 characters:
a 195-200 character key was a 500 (value too long). Widening a varchar is a catalogue change in PostgreSQL
(no rewrite, no row trigger fires).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "ledger_entries", "idempotency_key", type_=sa.String(length=220), existing_type=sa.String(length=200)
    )


def downgrade() -> None:
    op.alter_column(
        "ledger_entries", "idempotency_key", type_=sa.String(length=200), existing_type=sa.String(length=220)
    )
