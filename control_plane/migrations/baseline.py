"""The schema of revision ``0001`` (the last schema made by ``create_all``, before
migrations), frozen here: the baseline migration creates it, and :class:`Store` compares a
database made by that code path with it before stamping it at ``0001``. Never edit it: a
schema change is a new revision in ``versions/``.
"""

from __future__ import annotations

import sqlalchemy as sa


def _ts(name: str, *, nullable: bool, index: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, index=index)


def baseline_metadata() -> sa.MetaData:
    """A new :class:`~sqlalchemy.MetaData` holding the ten tables of revision 0001."""
    m = sa.MetaData()
    state = sa.String(16)
    sa.Table(
        "workflows", m,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, index=True),
        sa.Column("state", state, nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("document", sa.JSON, nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False, index=True),
        _ts("created_at", nullable=False, index=True),
        _ts("updated_at", nullable=False),
        _ts("finished_at", nullable=True),
    )
    sa.Table(
        "tasks", m,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workflow_id", sa.String(32), sa.ForeignKey("workflows.id"), nullable=False,
                  index=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("state", state, nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("depends_on", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        _ts("not_before", nullable=True),
    )
    sa.Table(
        "runs", m,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("workflow_id", sa.String(32), sa.ForeignKey("workflows.id"), nullable=False,
                  index=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False, index=True),
        sa.Column("task_name", sa.String(63), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("state", state, nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("site", sa.String(63), nullable=True, index=True),
        sa.Column("node", sa.String(255), nullable=True),
        sa.Column("handle", sa.JSON, nullable=True),
        sa.Column("placement", sa.JSON, nullable=True),
        _ts("created_at", nullable=False),
        _ts("placed_at", nullable=True),
        _ts("dispatched_at", nullable=True),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("output_tail", sa.Text, nullable=False),
        sa.Column("bytes_in", sa.Integer, nullable=False),
        sa.Column("bytes_out", sa.Integer, nullable=False),
        sa.Column("energy_j", sa.Float, nullable=True),
        sa.Column("runtime_s", sa.Float, nullable=True),
        sa.Column("cpu_time_s", sa.Float, nullable=True),
        sa.Column("max_rss_bytes", sa.BigInteger, nullable=True),
        sa.Column("accounting", sa.JSON, nullable=True),
        sa.Column("simulated", sa.Boolean, nullable=False),
        sa.Column("released", sa.Boolean, nullable=False),
        sa.Column("replaces_run_id", sa.String(32), nullable=True, index=True),
    )
    sa.Table(
        "events", m,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workflow_id", sa.String(32), nullable=True, index=True),
        sa.Column("run_id", sa.String(32), nullable=True, index=True),
        _ts("at", nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    sa.Table(
        "sites", m,
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("draining", sa.Boolean, nullable=False),
        _ts("created_at", nullable=False),
    )
    sa.Table(
        "artifacts", m,
        sa.Column("workflow_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("simulated", sa.Boolean, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("node", sa.String(255), nullable=True),
        _ts("created_at", nullable=False),
    )
    sa.Table(
        "enrollment_tokens", m,
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("site", sa.String(63), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=False),
        _ts("expires_at", nullable=False),
        _ts("created_at", nullable=False),
        _ts("used_at", nullable=True),
        sa.Column("used_by", sa.String(63), nullable=True),
    )
    sa.Table(
        "device_credentials", m,
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("site", sa.String(63), nullable=False, index=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        _ts("enrolled_at", nullable=False),
        _ts("revoked_at", nullable=True),
    )
    sa.Table(
        "tokens", m,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(128), nullable=False, index=True),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("tenants", sa.JSON, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("revoked_at", nullable=True),
    )
    sa.Table(
        "audit", m,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _ts("at", nullable=False, index=True),
        sa.Column("subject", sa.String(128), nullable=False, index=True),
        sa.Column("token_id", sa.String(64), nullable=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False, index=True),
    )
    return m
