"""Calibration statistics between a ticket and the tickets registered before it (one row per kind).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

Tickets registered before this revision have no rows: `ticketguard calibrate`
measures them; until then their verifications report the aligned test as uncalibrated.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ticket_references",
        sa.Column("ticket_id", sa.String(length=32), nullable=False),
        sa.Column("reference_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_ticket_references_ticket_id_tickets")),
        sa.ForeignKeyConstraint(["reference_id"], ["tickets.id"],
                                name=op.f("fk_ticket_references_reference_id_tickets")),
        sa.PrimaryKeyConstraint("ticket_id", "reference_id", "kind", name=op.f("pk_ticket_references")),
    )


def downgrade() -> None:
    op.drop_table("ticket_references")
