"""Attack reports: an owner's robustness report on one of its tickets, one row per attack and
strength, filled in by an `attack` job as each row finishes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attack_reports",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("ticket_id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("rows", sa.JSON(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_attack_reports_owner_id_owners")),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_attack_reports_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attack_reports")),
    )
    with op.batch_alter_table("attack_reports") as batch_op:
        batch_op.create_index(batch_op.f("ix_attack_reports_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_attack_reports_ticket_id"), ["ticket_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("attack_reports") as batch_op:
        batch_op.drop_index(batch_op.f("ix_attack_reports_ticket_id"))
        batch_op.drop_index(batch_op.f("ix_attack_reports_owner_id"))
    op.drop_table("attack_reports")
