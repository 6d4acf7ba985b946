"""server: uploads over HTTP (tus 1.0 and the IETF resumable-upload draft)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "http_uploads",
        sa.Column("file_id", sa.String(length=32), nullable=False),
        sa.Column("url_id", sa.String(length=32), nullable=False),
        sa.Column("metadata_header", sa.Text(), nullable=True),
        sa.Column("length_deferred", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("concat", sa.String(length=16), nullable=True),
        sa.Column("parts", sa.Text(), nullable=True),
        sa.Column("digest", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["received_files.file_id"],
            name=op.f("fk_http_uploads_file_id_received_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("file_id", name=op.f("pk_http_uploads")),
    )


def downgrade() -> None:
    op.drop_table("http_uploads")
