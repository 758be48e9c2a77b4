"""The store: a database made by an older schema is refused with a message that names
the missing columns and what to do, never a failure on every reconcile cycle; state
columns read back as enums (on SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.orm import Session

from continuum.model import TaskState, WorkflowState
from control_plane.leader import Fenced
from control_plane.store import (
    EventRow,
    GroupCommit,
    SchemaMismatch,
    SiteRow,
    Store,
    TaskRow,
    WorkflowRow,
    _Write,
    add_event,
    insert_later,
    read_rows,
)


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


def test_column_rows_write_back_what_changed_fenced(database_url: str) -> None:
    """The reconciler's hot path: rows read with Core, changed, written back in one
    executemany per set of changed columns, only in a transaction the fence admits."""
    store = Store(database_url)
    with store.session() as s:
        s.add_all([WorkflowRow(id=f"wf-{i}", name=f"w{i}", state=WorkflowState.Running,
                               reason="", document={"i": i}) for i in range(3)])
    with store.session() as s:
        rows = read_rows(s, WorkflowRow, ["wf-0", "wf-1", "wf-2", "wf-none"], ["name", "state"])
    assert sorted(rows) == ["wf-0", "wf-1", "wf-2"]
    assert rows["wf-0"].state is WorkflowState.Running
    with pytest.raises(AttributeError, match="document"):
        _ = rows["wf-0"].document  # a column not read
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows["wf-0"].state, rows["wf-0"].finished_at = WorkflowState.Succeeded, at
    rows["wf-1"].reason = "cancelled on request"
    rows["wf-2"].name = "w2"  # the value it has: not a change
    assert rows["wf-2"].changed() == set()

    def refuse(_: object) -> None:
        raise Fenced("lease taken over")

    fenced = store.fenced(refuse)
    with pytest.raises(Fenced), fenced.session() as s:
        fenced.write_rows(s, WorkflowRow, rows.values())
    with store.session() as s:  # nothing was written
        assert s.scalars(select(WorkflowRow.state).where(WorkflowRow.id == "wf-0")).one() \
            is WorkflowState.Running
    with store.session() as s:  # the changes were kept: written now
        assert store.write_rows(s, WorkflowRow, rows.values()) == 2
        assert store.write_rows(s, WorkflowRow, rows.values()) == 0  # written: unchanged
    with store.session() as s:
        got = {w.id: (w.state, w.reason, w.finished_at, w.document, w.name)
               for w in s.scalars(select(WorkflowRow))}
    store.close()
    assert got == {"wf-0": (WorkflowState.Succeeded, "", at, {"i": 0}, "w0"),
                   "wf-1": (WorkflowState.Running, "cancelled on request", None, {"i": 1}, "w1"),
                   "wf-2": (WorkflowState.Running, "", None, {"i": 2}, "w2")}


def test_rows_inserted_later_go_in_one_statement_a_table_for_a_whole_group_commit(
        database_url: str) -> None:
    """``insert_later``: a group commit of several writers' rows is one INSERT per table,
    parents first; a fence that refuses the block inserts nothing."""
    store = Store(database_url)
    inserts: list[tuple[str, int]] = []

    def count(_conn, _cursor, statement, parameters, _context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT"):
            table = statement.split()[2].strip('"')
            inserts.append((table, len(parameters) if executemany else 1))

    def write(i: int) -> Callable[[Session], str]:
        def fn(s: Session) -> str:
            insert_later(s, WorkflowRow, ({"id": f"wf-{i}", "name": f"w{i}", "reason": "",
                                           "state": WorkflowState.Pending, "document": {}},))
            insert_later(s, TaskRow, ({"workflow_id": f"wf-{i}", "name": n, "spec": {},
                                       "depends_on": [], "reason": "", "attempts": 0,
                                       "state": TaskState.Ready} for n in "ab"))
            add_event(s, "WorkflowAccepted", "2 tasks", workflow_id=f"wf-{i}")
            return f"wf-{i}"
        return fn

    writes = GroupCommit(store)
    event.listen(store.engine, "before_cursor_execute", count)
    try:
        writes._commit(group := [_Write(write(i)) for i in range(3)])
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert [w.result for w in group] == ["wf-0", "wf-1", "wf-2"]
    assert inserts == [("workflows", 3), ("tasks", 6), ("events", 3)]

    def refuse(_: object) -> None:
        raise Fenced("lease taken over")

    fenced = store.fenced(refuse)
    with pytest.raises(Fenced), fenced.session() as s:
        write(9)(s)
    with store.session() as s:
        assert sorted(s.scalars(select(WorkflowRow.id))) == ["wf-0", "wf-1", "wf-2"]
        assert s.scalar(select(func.count()).select_from(TaskRow)) == 6
        assert s.scalar(select(func.count()).select_from(EventRow)) == 3
    store.close()


def _on_disk(store: Store, table: str) -> bytes:
    """The bytes the database keeps for ``table`` on disk now: SQLite's file and its
    write-ahead log, or PostgreSQL's heap file of the table after a CHECKPOINT (this
    test's server is local)."""
    if store.url.startswith("sqlite"):
        db = Path(store.url.removeprefix("sqlite:///"))
        wal = db.with_name(db.name + "-wal")
        return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("CHECKPOINT")
        data = c.exec_driver_sql("SHOW data_directory").scalar()
        rel = c.exec_driver_sql(f"SELECT pg_relation_filepath('{table}')").scalar()
    return (Path(str(data)) / str(rel)).read_bytes()


def test_vacuum_leaves_no_old_bytes_of_a_changed_row(database_url: str) -> None:
    """What sealing a secret stored in clear relies on (control_plane/federation.py)."""
    store = Store(database_url)
    try:
        with store.session() as s:
            s.add(SiteRow(name="hpc", kind="slurm", spec={"config": {"password": "in-clear-1"}}))
        with store.session() as s:
            row = s.get(SiteRow, "hpc")
            assert row is not None
            row.spec = {"config": {"password": "sealed"}}
        assert b"in-clear-1" in _on_disk(store, "sites")  # the old row's bytes are still there
        store.vacuum("sites")
        assert b"in-clear-1" not in _on_disk(store, "sites")
        with store.session() as s:
            row = s.get(SiteRow, "hpc")
            assert row is not None and row.spec == {"config": {"password": "sealed"}}
    finally:
        store.close()


def test_a_store_outlives_a_restart_of_postgresql(postgres) -> None:  # type: ignore[no-untyped-def]
    """The pooled connections a restart cut are replaced, not handed out broken."""
    url = postgres.new_database()
    store = Store(url)
    try:
        with store.session() as s:
            s.add(WorkflowRow(id="wf-1", name="wf", state=WorkflowState.Running, document={}))
        postgres.restart()
        with store.session() as s:
            row = s.get(WorkflowRow, "wf-1")
            assert row is not None and row.state is WorkflowState.Running
        store.ping()
    finally:
        store.close()
        postgres.drop_database(url)
