"""idempotency keys claimed before the operation runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 22:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("claim", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("idempotency_keys", "claim")
