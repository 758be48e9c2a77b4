"""The schema's migrations (control_plane/migrations), on SQLite and PostgreSQL: the
migrated schema is exactly the models' (a model change without a migration fails here);
a state directory made before migrations (``create_all``, no ``alembic_version``) is
upgraded in place with its rows; ``continuum db upgrade`` / ``db current`` on a new and
on a current database; replicas opening one new database at once migrate it once; a
database migrated by a newer release is refused with the reason."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, select, text
from typer.testing import CliRunner

from continuum.model import WorkflowState
from control_plane.cli import app
from control_plane.migrations import LOCK_KEY, config, current, head
from control_plane.migrations.baseline import baseline_metadata
from control_plane.store import (
    ArtifactRow,
    Base,
    RunRow,
    SchemaMismatch,
    Store,
    WorkflowRow,
    make_engine,
)
from tests.helpers import wait_for

runner = CliRunner()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_migrated_schema_is_the_models(database_url: str) -> None:
    store = Store(database_url)
    try:
        with store.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert current(store.engine) == head()
    finally:
        store.close()
    assert diff == [], ("the models in control_plane/store.py differ from the migrated "
                        f"schema: add a migration in control_plane/migrations/versions: {diff}")


def test_a_state_directory_from_before_migrations_is_upgraded_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'continuum.db'}"
    old = baseline_metadata()  # what the release before migrations made with create_all
    engine = create_engine(url)
    with engine.begin() as conn:
        old.create_all(conn, tables=[t for t in old.sorted_tables if t.name != "audit"])
        conn.execute(insert(old.tables["workflows"]).values(
            id="wf-old", name="kept", state="Running", reason="", document={"spec": {}},
            tenant="default", created_at=T0, updated_at=T0))
    assert "alembic_version" not in inspect(engine).get_table_names()
    assert current(engine) is None
    engine.dispose()

    r = runner.invoke(app, ["db", "upgrade", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert f"made before migrations: stamped 0001, upgraded to revision {head()}" in r.output
    store = Store(url)
    try:
        assert current(store.engine) == head()
        with store.session() as s:
            wf = s.get(WorkflowRow, "wf-old")
            assert wf is not None
            assert (wf.name, wf.state, wf.created_at) == ("kept", WorkflowState.Running, T0)
        assert inspect(store.engine).has_table("audit")  # the table an older release lacked
    finally:
        store.close()
    with create_engine(url).connect() as conn:  # stamped at the baseline, then upgraded
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head()


def test_a_database_at_0001_upgrades_keeping_its_rows_and_takes_byte_counts_over_2_gib(
        database_url: str) -> None:
    """0003 widened ``artifacts.size`` and ``runs.bytes_in/out`` to BIGINT (INTEGER is
    32 bits on PostgreSQL)."""
    old = baseline_metadata()
    engine = make_engine(database_url)
    with engine.begin() as conn:
        command.upgrade(config(conn), "0001")
        conn.execute(insert(old.tables["workflows"]).values(
            id="wf-old", name="kept", state="Running", reason="", document={}, tenant="default",
            created_at=T0, updated_at=T0))
        conn.execute(insert(old.tables["tasks"]).values(
            id=1, workflow_id="wf-old", name="a", state="Running", reason="", spec={},
            depends_on=[], attempts=1))
        conn.execute(insert(old.tables["runs"]).values(
            id="run-old", workflow_id="wf-old", task_id=1, task_name="a", attempt=1,
            state="Running", reason="", created_at=T0, output_tail="", bytes_in=7, bytes_out=8,
            simulated=False, released=False))
        conn.execute(insert(old.tables["artifacts"]).values(
            workflow_id="wf-old", name="x", sha256="0" * 64, size=9, simulated=False,
            created_at=T0))
    engine.dispose()
    big = 5 << 30
    store = Store(database_url)
    try:
        assert current(store.engine) == head()
        with store.session() as s:
            run, art = s.get(RunRow, "run-old"), s.get(ArtifactRow, ("wf-old", "x"))
            assert run is not None and art is not None
            assert (run.bytes_in, run.bytes_out, art.size) == (7, 8, 9)
            run.bytes_in, run.bytes_out, art.size = big, big + 1, big + 2
        with store.session() as s:
            run, art = s.get(RunRow, "run-old"), s.get(ArtifactRow, ("wf-old", "x"))
            assert run is not None and art is not None
            assert (run.bytes_in, run.bytes_out, art.size) == (big, big + 1, big + 2)
    finally:
        store.close()


def test_db_upgrade_on_a_new_and_on_a_current_database(database_url: str, tmp_path: Path) -> None:
    args = ["db", "upgrade", "--database-url", database_url, "--state-dir", str(tmp_path)]
    r = runner.invoke(app, ["db", "current", "--database-url", database_url])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"none (this release's newest is {head()})"
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"upgraded from empty to revision {head()}" in r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"already at revision {head()}" in r.output
    r = runner.invoke(app, ["db", "current", "--database-url", database_url])
    assert (r.exit_code, r.output.strip()) == (0, f"{head()} (head)")
    store = Store(database_url)  # what db upgrade made is what the server opens
    with store.session() as s:
        assert s.scalars(select(WorkflowRow)).all() == []
    store.close()


def test_db_commands_read_the_state_dir_as_the_server_does(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = runner.invoke(app, ["db", "current", "--state-dir", str(state)])
    assert r.exit_code == 1 and f"no database at {state / 'continuum.db'}" in r.output
    r = runner.invoke(app, ["db", "upgrade"], env={"CONTINUUM_STATE_DIR": str(state)})
    assert r.exit_code == 0, r.output
    assert (state / "continuum.db").exists()
    r = runner.invoke(app, ["db", "current", "--state-dir", str(state)])
    assert (r.exit_code, r.output.strip()) == (0, f"{head()} (head)")


def test_replicas_upgrading_a_new_database_together_migrate_it_once(postgres) -> None:  # type: ignore[no-untyped-def]
    """Four ``db upgrade`` at once wait on the advisory lock (held here until all four
    wait), then one migrates and three find the database at head."""
    url = postgres.new_database()
    engine = create_engine(url)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
            procs = [subprocess.Popen([sys.executable, "-m", "control_plane.cli", "db",
                                       "upgrade", "--database-url", url],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True) for _ in range(4)]

            def waiting() -> bool:
                with engine.connect() as c:
                    return c.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = "
                                          "'advisory' AND NOT granted")).scalar() == 4
            wait_for(waiting, timeout=60, message="four upgrades waiting on the lock")
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            holder.commit()
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, outs
        assert sum("upgraded from empty" in o for o in outs) == 1, outs
        assert sum("already at revision" in o for o in outs) == 3, outs
    finally:
        engine.dispose()
        postgres.drop_database(url)


def test_a_replica_starts_while_another_leads(postgres) -> None:  # type: ignore[no-untyped-def]
    """The leader holds its advisory lock for as long as it leads: a replica starting
    meanwhile (its upgrade finds the database at head) must not wait for it."""
    from control_plane.leader import ADVISORY_KEY

    url = postgres.new_database()
    Store(url).close()
    engine = create_engine(url)
    try:
        with engine.connect() as leader:
            assert leader.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                  {"k": ADVISORY_KEY}).scalar()
            r = subprocess.run([sys.executable, "-m", "control_plane.cli", "db", "upgrade",
                                "--database-url", url], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0 and "already at revision" in r.stdout + r.stderr, r
            leader.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            leader.commit()
    finally:
        engine.dispose()
        postgres.drop_database(url)


def test_a_database_migrated_by_a_newer_release_is_refused(database_url: str) -> None:
    Store(database_url).close()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaMismatch) as e:
        Store(database_url)
    assert "revision 9999" in str(e.value) and "newer Continuum" in str(e.value)


def test_a_replica_opens_the_store_while_another_leads(postgres) -> None:  # type: ignore[no-untyped-def]
    """The upgrade's lock is not the leader's (held for as long as a replica leads)."""
    from control_plane.leader import ADVISORY_KEY

    url = postgres.new_database()
    engine = create_engine(url)
    try:
        with engine.connect() as leader:
            leader.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            Store(url).close()  # with one key for both, this waited forever
            leader.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
    finally:
        engine.dispose()
        postgres.drop_database(url)
