"""given-up generation images

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "given_up_images",
        sa.Column("image_id", sa.String(length=32), nullable=False),
        sa.Column("given_up_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_given_up_images")),
    )


def downgrade() -> None:
    op.drop_table("given_up_images")
