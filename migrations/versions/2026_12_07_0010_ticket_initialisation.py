"""Tickets record the initialisation they start from: its sign fingerprint (an artifact), the seed
where one is known, and whether it is public, so a suspect that shares a public initialisation is not
called a copy on white-box evidence alone (issue 14, finding 4).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("init_signs_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("init_seed", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("init_public", sa.Boolean(), nullable=True))
        batch.create_foreign_key(op.f("fk_tickets_init_signs_sha256_artifacts"), "artifacts", ["init_signs_sha256"],
                                 ["sha256"])


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_constraint(op.f("fk_tickets_init_signs_sha256_artifacts"), type_="foreignkey")
        batch.drop_column("init_public")
        batch.drop_column("init_seed")
        batch.drop_column("init_signs_sha256")
