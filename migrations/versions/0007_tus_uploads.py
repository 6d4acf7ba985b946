"""tus uploads: the upload URL of a transfer, and the partial uploads of --parallel

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-23 21:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upload_url", sa.Text(), nullable=True))

    op.create_table(
        "tus_parts",
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("first_chunk", sa.Integer(), nullable=False),
        sa.Column("end_chunk", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["transfers.file_id"],
            name=op.f("fk_tus_parts_file_id_transfers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("file_id", "part", name=op.f("pk_tus_parts")),
    )


def downgrade() -> None:
    op.drop_table("tus_parts")
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_column("upload_url")
