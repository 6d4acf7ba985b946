"""upload ownership: epochs and leases, publish identity, name claims

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("received_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("epoch", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("overwrite", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("published_inode", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("published_mtime_ns", sa.BigInteger(), nullable=True))

    op.create_table(
        "upload_names",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["received_files.file_id"],
            name=op.f("fk_upload_names_file_id_received_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_upload_names")),
    )
    with op.batch_alter_table("upload_names", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_upload_names_file_id"), ["file_id"], unique=False)
    # Names of uploads that were unfinished when this revision arrived are claimed by them.
    op.execute(
        "INSERT INTO upload_names (name, file_id, timestamp) "
        "SELECT name, file_id, timestamp FROM received_files WHERE state = 'receiving' "
        "AND file_id IN (SELECT MIN(file_id) FROM received_files WHERE state = 'receiving' "
        "GROUP BY name)"
    )


def downgrade() -> None:
    with op.batch_alter_table("upload_names", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_names_file_id"))
    op.drop_table("upload_names")
    with op.batch_alter_table("received_files", schema=None) as batch_op:
        batch_op.drop_column("published_mtime_ns")
        batch_op.drop_column("published_inode")
        batch_op.drop_column("overwrite")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("owner")
        batch_op.drop_column("epoch")
