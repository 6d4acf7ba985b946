"""client transfers: canonical server identity, per-transfer locks

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("server", sa.Text(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_transfers_source_path_server_name"),
            ["source_path", "server", "name"],
            unique=False,
        )
    op.create_table(
        "transfer_locks",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("file_id", sa.String(length=32), nullable=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started", sa.String(length=32), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_transfer_locks")),
    )
    with op.batch_alter_table("transfer_locks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_transfer_locks_file_id"), ["file_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("transfer_locks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfer_locks_file_id"))
    op.drop_table("transfer_locks")
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfers_source_path_server_name"))
        batch_op.drop_column("server")
