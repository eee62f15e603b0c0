"""deleted projects, whose jobs are deleted once settled

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 23:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deleted_projects",
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_deleted_projects")),
    )


def downgrade() -> None:
    op.drop_table("deleted_projects")
