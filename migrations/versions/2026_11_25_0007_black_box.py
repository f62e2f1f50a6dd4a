"""Black-box verification: trigger sets (scheme V3), one per ticket registered with `trigger_set=true`;
verifications gain a mode and a source, and a suspect behind a remote endpoint has no file.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trigger_sets",
        sa.Column("ticket_id", sa.String(length=32), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["artifact_sha256"], ["artifacts.sha256"],
                                name=op.f("fk_trigger_sets_artifact_sha256_artifacts")),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name=op.f("fk_trigger_sets_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("ticket_id", name=op.f("pk_trigger_sets")),
    )


    with op.batch_alter_table("verifications") as batch:
        batch.alter_column("suspect_sha256", existing_type=sa.String(length=64), nullable=True)
        batch.add_column(sa.Column("mode", sa.String(length=20), nullable=False, server_default="white_box"))
        batch.add_column(sa.Column("source", sa.String(length=20), nullable=False, server_default="model"))
        batch.add_column(sa.Column("endpoint", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verifications") as batch:
        batch.drop_column("endpoint")
        batch.drop_column("source")
        batch.drop_column("mode")
        batch.alter_column("suspect_sha256", existing_type=sa.String(length=64), nullable=False)
    op.drop_table("trigger_sets")
