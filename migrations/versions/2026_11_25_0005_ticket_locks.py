"""Key masks (scheme V1): a locked ticket's key, kept server-side.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ticket_locks",
        sa.Column("ticket_id", sa.String(length=32), nullable=False),
        sa.Column("score", sa.String(length=20), nullable=False),
        sa.Column("key_fraction", sa.Float(), nullable=False),
        sa.Column("key_mask_sha256", sa.String(length=64), nullable=False),
        sa.Column("locked_model_sha256", sa.String(length=64), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_mask_sha256"], ["artifacts.sha256"],
                                name=op.f("fk_ticket_locks_key_mask_sha256_artifacts")),
        sa.ForeignKeyConstraint(["locked_model_sha256"], ["artifacts.sha256"],
                                name=op.f("fk_ticket_locks_locked_model_sha256_artifacts")),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_ticket_locks_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("ticket_id", name=op.f("pk_ticket_locks")),
    )


def downgrade() -> None:
    op.drop_table("ticket_locks")
