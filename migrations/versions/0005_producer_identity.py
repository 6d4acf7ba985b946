"""producer identity: instance nonces, process holders, producer ids namespaced by principal

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000

Server side: ``stream_producers.instance`` records which producer instance owns a client id
(NULL for rows written before: the first instance to publish under the id adopts it), and the
producer columns widen to hold a client id namespaced by its principal. Client side:
``stream_sequences.instance`` is the nonce a producer presents in ``hello``; ``holder`` is the
process producing from the store now.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stream_producers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance", sa.String(length=64), nullable=True))
        batch_op.alter_column(
            "client_id",
            existing_type=sa.String(length=64),
            type_=sa.String(length=255),
            existing_nullable=False,
        )
    with op.batch_alter_table("stream_messages", schema=None) as batch_op:
        batch_op.alter_column(
            "producer",
            existing_type=sa.String(length=64),
            type_=sa.String(length=255),
            existing_nullable=False,
        )
    with op.batch_alter_table("stream_sequences", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("holder", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stream_sequences", schema=None) as batch_op:
        batch_op.drop_column("holder")
        batch_op.drop_column("instance")
    with op.batch_alter_table("stream_messages", schema=None) as batch_op:
        batch_op.alter_column(
            "producer",
            existing_type=sa.String(length=255),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
    with op.batch_alter_table("stream_producers", schema=None) as batch_op:
        batch_op.alter_column(
            "client_id",
            existing_type=sa.String(length=255),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
        batch_op.drop_column("instance")
