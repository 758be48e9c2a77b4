"""The store: a database made by an older schema is refused with a message that names
the missing columns and what to do, never a failure on every reconcile cycle; state
columns read back as enums (on SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from continuum.model import WorkflowState
from control_plane.store import SchemaMismatch, Store, WorkflowRow


def test_a_database_from_before_replaces_run_id_is_refused_with_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "continuum.db"
    with sqlite3.connect(db) as conn:  # the runs table as an older version made it
        conn.execute("CREATE TABLE runs (id VARCHAR(32) PRIMARY KEY, state VARCHAR(16))")
    with pytest.raises(SchemaMismatch) as e:
        Store(f"sqlite:///{db}")
    assert "runs.replaces_run_id" in str(e.value)
    assert "start with a new state directory" in str(e.value)


def test_states_are_stored_as_their_values_and_read_back_as_enums(database_url: str) -> None:
    store = Store(database_url)
    with store.session() as s:
        s.add(WorkflowRow(id="wf-1", name="wf", state=WorkflowState.Cancelling, document={}))
    with store.session() as s:
        (state,) = s.scalars(select(WorkflowRow.state)).all()
    store.close()
    assert state is WorkflowState.Cancelling
    raw = create_engine(database_url)
    try:
        with raw.connect() as conn:
            assert conn.execute(text("SELECT state FROM workflows")).all() == [("Cancelling",)]
    finally:
        raw.dispose()
