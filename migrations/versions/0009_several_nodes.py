"""several server nodes on one store: live producer sessions, housekeeping rounds

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 10:00:00.000000

``stream_producers.session`` names the one live connection of a producer (whichever node
serves it), ``session_instance`` the producer instance it belongs to, ``session_until`` when
it lapses unless renewed; every append checks it, so a connection fenced on another node
stores nothing more. ``server_jobs`` records when each housekeeping job last ran and on which
node, so a round runs once across the nodes, not once per node.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stream_producers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("session_instance", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("session_until", sa.DateTime(), nullable=True))
    op.create_table(
        "server_jobs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=True),
        sa.Column("last_run", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_jobs")),
    )


def downgrade() -> None:
    op.drop_table("server_jobs")
    with op.batch_alter_table("stream_producers", schema=None) as batch_op:
        batch_op.drop_column("session_until")
        batch_op.drop_column("session_instance")
        batch_op.drop_column("session")
