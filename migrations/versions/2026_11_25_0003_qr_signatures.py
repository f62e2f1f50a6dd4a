"""QR signatures: a ticket's signature kind, and its server-side credential.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signature", sa.String(length=20), server_default="none", nullable=False))
    op.create_table(
        "signatures",
        sa.Column("ticket_id", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("error_level", sa.String(length=1), nullable=False),
        sa.Column("layer", sa.String(length=200), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("col", sa.Integer(), nullable=False),
        sa.Column("matrix", sa.JSON(), nullable=False),
        sa.Column("keep_function_patterns", sa.Boolean(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_signatures_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("ticket_id", name=op.f("pk_signatures")),
        sa.UniqueConstraint("payload", name=op.f("uq_signatures_payload")),
    )


def downgrade() -> None:
    op.drop_table("signatures")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("signature")
