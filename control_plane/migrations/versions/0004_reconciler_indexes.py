"""Indexes for the edge-driven reconciler's queries (issue 16): ``workflows (state,
created_at)`` — the submissions and cancels a cycle takes, oldest first — and
``runs.released`` — the full resync's runs not yet released.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_workflows_state_created_at", "workflows", ["state", "created_at"])
    op.create_index("ix_runs_released", "runs", ["released"])


def downgrade() -> None:
    op.drop_index("ix_runs_released", table_name="runs")
    op.drop_index("ix_workflows_state_created_at", table_name="workflows")
