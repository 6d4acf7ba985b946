"""streams

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 17:42:48.702661
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_channels",
        sa.Column("channel", sa.String(length=128), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("channel", name=op.f("pk_stream_channels")),
    )
    op.create_table(
        "stream_cursors",
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=512), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "channel", name=op.f("pk_stream_cursors")),
    )
    op.create_table(
        "stream_messages",
        sa.Column("channel", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("producer", sa.String(length=64), nullable=False),
        sa.Column("producer_seq", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("channel", "seq", name=op.f("pk_stream_messages")),
    )
    with op.batch_alter_table("stream_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stream_messages_channel_timestamp"),
            ["channel", "timestamp"],
            unique=False,
        )

    op.create_table(
        "stream_outbox",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=512), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "channel", "seq", name=op.f("pk_stream_outbox")),
    )
    op.create_table(
        "stream_producers",
        sa.Column("channel", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("channel", "client_id", name=op.f("pk_stream_producers")),
    )
    op.create_table(
        "stream_sequences",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=512), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("acked_seq", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "channel", name=op.f("pk_stream_sequences")),
    )


def downgrade() -> None:
    op.drop_table("stream_sequences")
    op.drop_table("stream_producers")
    op.drop_table("stream_outbox")
    with op.batch_alter_table("stream_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_messages_channel_timestamp"))

    op.drop_table("stream_messages")
    op.drop_table("stream_cursors")
    op.drop_table("stream_channels")
