"""``continuum db`` — the control plane's database schema (Alembic migrations,
control_plane/migrations).

    continuum db upgrade --state-dir ./state            # SQLite in the state directory
    CONTINUUM_DATABASE_URL=postgresql+psycopg://... continuum db upgrade
    continuum db current                                # the database's revision

``continuum server`` upgrades the database itself when it starts; ``db upgrade`` does only
that (e.g. a deployment's init step before the replicas start). Both read the database
as ``continuum server`` does: ``--database-url``/``$CONTINUUM_DATABASE_URL``, else
``continuum.db`` in ``--state-dir``/``$CONTINUUM_STATE_DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from control_plane.cli_sites import console, err

app = typer.Typer(help="The database schema: upgrade it to this release, show its revision.",
                  no_args_is_help=True)

StateDir = Annotated[Path, typer.Option(help="the server's state directory (SQLite database)",
                                        envvar="CONTINUUM_STATE_DIR")]
DatabaseUrl = Annotated[str | None, typer.Option(
    help="SQLAlchemy URL (default: SQLite in the state dir)", envvar="CONTINUUM_DATABASE_URL")]


def _url(command: str, state_dir: Path, database_url: str | None, *, create: bool) -> str:
    from control_plane.cli import _server_extra  # cli imports this module first

    with _server_extra(f"db {command}"):
        from control_plane.settings import Settings
    try:
        settings = Settings(state_dir=state_dir, database_url=database_url)
    except ValueError as e:  # pydantic's ValidationError is one
        err.print(f"continuum db {command}: {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if settings.database_url is None:
        db = state_dir / "continuum.db"
        if create:
            state_dir.mkdir(parents=True, exist_ok=True)
        elif not db.exists():
            err.print(f"[red]error:[/red] no database at {db}; give the server's --state-dir "
                      "or --database-url")
            raise typer.Exit(1)
    return settings.db_url


@app.command("upgrade")
def upgrade_cmd(state_dir: StateDir = Path("./state"), database_url: DatabaseUrl = None) -> None:
    """Upgrade the database to this release's newest revision (creating the schema in an
    empty database, adopting one of a release from before migrations). Safe while
    replicas run: on PostgreSQL the upgrade holds an advisory lock. Exit 1 when it
    cannot be upgraded (the reason on stderr)."""
    from control_plane.migrations import BASELINE, SchemaMismatch, upgrade
    from control_plane.store import make_engine

    engine = make_engine(_url("upgrade", state_dir, database_url, create=True))
    name = engine.url.render_as_string(hide_password=True)
    try:
        done = upgrade(engine)
    except SchemaMismatch as e:
        err.print(f"continuum db upgrade: {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    if done.before == done.after:
        said = f"already at revision {done.after}"
    elif done.adopted:
        said = (f"made before migrations: stamped {BASELINE}, upgraded to revision "
                f"{done.after}")
    else:
        said = f"upgraded from {done.before or 'empty'} to revision {done.after}"
    console.print(f"{name}: {said}", highlight=False, soft_wrap=True)


@app.command("current")
def current_cmd(state_dir: StateDir = Path("./state"), database_url: DatabaseUrl = None) -> None:
    """Print the database's revision and whether it is this release's newest, e.g.
    ``0001 (head)``; ``none`` for a database never migrated."""
    from control_plane.migrations import current, head
    from control_plane.store import make_engine

    engine = make_engine(_url("current", state_dir, database_url, create=False))
    try:
        rev = current(engine)
    finally:
        engine.dispose()
    note = "head" if rev == head() else f"this release's newest is {head()}"
    console.print(f"{rev or 'none'} ({note})", highlight=False)
