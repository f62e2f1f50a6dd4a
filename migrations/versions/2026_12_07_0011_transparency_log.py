"""The transparency log's signed tree heads (issue 15). The Merkle tree's leaves are the audit events'
chain hashes, so an existing chain becomes the tree's first leaves with no data migrated.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

APPEND_ONLY_MESSAGE = "audit_tree_heads is append-only"


def upgrade() -> None:
    # events appended from now on never go back in time; earlier ones may, by clock skew between hosts
    with op.batch_alter_table("audit_head") as batch:
        batch.add_column(sa.Column("ordered_from", sa.Integer(), nullable=False, server_default="1"))
    op.execute("UPDATE audit_head SET ordered_from = seq + 1")
    op.create_table(
        "audit_tree_heads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tree_size", sa.Integer(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_tree_heads")),
    )
    with op.batch_alter_table("audit_tree_heads") as batch:
        batch.create_index(batch.f("ix_audit_tree_heads_tree_size"), ["tree_size"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION audit_tree_heads_refuse_change() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END;
            $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER audit_tree_heads_append_only BEFORE UPDATE OR DELETE
                      ON audit_tree_heads FOR EACH ROW EXECUTE FUNCTION audit_tree_heads_refuse_change()""")
        op.execute("""CREATE TRIGGER audit_tree_heads_no_truncate BEFORE TRUNCATE
                      ON audit_tree_heads FOR EACH STATEMENT EXECUTE FUNCTION audit_tree_heads_refuse_change()""")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER audit_tree_heads_no_{verb.lower()} BEFORE {verb} ON audit_tree_heads
                           BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_tree_heads_append_only ON audit_tree_heads")
        op.execute("DROP TRIGGER IF EXISTS audit_tree_heads_no_truncate ON audit_tree_heads")
        op.execute("DROP FUNCTION IF EXISTS audit_tree_heads_refuse_change()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_tree_heads_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_tree_heads_no_delete")
    op.drop_table("audit_tree_heads")
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("ordered_from")
