"""Screening at registration (issue 15): a refused ticket's reason code, and the same owner's earlier
ticket a new one derives from.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("error_code", sa.String(50), nullable=True))
        batch.add_column(sa.Column("derived_from_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_column("derived_from_id")
        batch.drop_column("error_code")
