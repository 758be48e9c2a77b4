"""Byte counts as BIGINT: ``artifacts.size``, ``runs.bytes_in`` and ``runs.bytes_out``
(INTEGER is 32 bits on PostgreSQL, so an artifact of 2 GiB or more could not be recorded;
``artifact_max_bytes`` is 16 GiB by default). On SQLite the tables are copied (batch).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as t:
        t.alter_column("size", existing_type=sa.Integer(), type_=sa.BigInteger(),
                       existing_nullable=False)
    with op.batch_alter_table("runs") as t:
        for column in ("bytes_in", "bytes_out"):
            t.alter_column(column, existing_type=sa.Integer(), type_=sa.BigInteger(),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("runs") as t:
        for column in ("bytes_in", "bytes_out"):
            t.alter_column(column, existing_type=sa.BigInteger(), type_=sa.Integer(),
                           existing_nullable=False)
    with op.batch_alter_table("artifacts") as t:
        t.alter_column("size", existing_type=sa.BigInteger(), type_=sa.Integer(),
                       existing_nullable=False)
