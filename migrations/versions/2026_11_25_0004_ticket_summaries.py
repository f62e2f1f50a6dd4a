"""The 1:N search index: one permutation-invariant weight summary per registered ticket.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Tickets registered before this revision have no row; the verification job computes their summary
from the stored weights when it needs it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ticket_summaries",
        sa.Column("ticket_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_ticket_summaries_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("ticket_id", name=op.f("pk_ticket_summaries")),
    )


def downgrade() -> None:
    op.drop_table("ticket_summaries")
