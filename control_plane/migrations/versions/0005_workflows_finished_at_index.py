"""Index ``workflows.finished_at``: the retention sweep's query, finished workflows
oldest first (control_plane/retention.py).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_workflows_finished_at", "workflows", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_workflows_finished_at", table_name="workflows")
