"""received files and chunks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 16:49:51.074323
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "received_files",
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("file_id", name=op.f("pk_received_files")),
    )
    with op.batch_alter_table("received_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_received_files_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_received_files_state"), ["state"], unique=False)

    op.create_table(
        "received_chunks",
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(length=32), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["received_files.file_id"],
            name=op.f("fk_received_chunks_file_id_received_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("file_id", "chunk_index", name=op.f("pk_received_chunks")),
    )


def downgrade() -> None:
    op.drop_table("received_chunks")
    with op.batch_alter_table("received_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_received_files_state"))
        batch_op.drop_index(batch_op.f("ix_received_files_name"))

    op.drop_table("received_files")
