"""``leases`` (leader election and its fencing epoch, control_plane/leader.py) and
``device_messages`` (the replicas' device-message relay, control_plane/relay.py).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.store import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("device_messages",
    sa.Column("site", sa.String(length=63), nullable=False),
    sa.Column("topic", sa.String(length=255), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    sa.Column("rank", sa.Float(), nullable=False),
    sa.Column("received_at", sa.Float(), nullable=False),
    sa.Column("origin", sa.String(length=64), nullable=False),
    sa.Column("written_at", sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint("site", "topic")
    )
    with op.batch_alter_table("device_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_messages_written_at"), ["written_at"], unique=False)

    op.create_table("leases",
    sa.Column("name", sa.String(length=63), nullable=False),
    sa.Column("holder", sa.String(length=255), nullable=False),
    sa.Column("epoch", sa.BigInteger(), nullable=False),
    sa.Column("api_url", sa.Text(), nullable=False),
    sa.Column("acquired_at", UTCDateTime(), nullable=False),
    sa.Column("renewed_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("name")
    )


def downgrade() -> None:
    op.drop_table("leases")
    with op.batch_alter_table("device_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_messages_written_at"))

    op.drop_table("device_messages")
