"""Baseline: the schema Continuum made with ``create_all`` before migrations (eleven
tables; :mod:`control_plane.migrations.baseline`).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from alembic import op

from control_plane.migrations.baseline import baseline_metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind())


def downgrade() -> None:
    baseline_metadata().drop_all(op.get_bind())
