"""The database schema's migrations (Alembic), run by :class:`control_plane.store.Store`
when it opens a database and by ``continuum db upgrade``.

:func:`upgrade` brings a database to the newest revision (``head``) under a lock, so
replicas starting together do not race; :func:`current` reads a database's revision.
``versions/`` holds one module per revision; a change to the models in
``control_plane/store.py`` needs a new revision there
(tests/control_plane/test_schema_migrations.py fails while the models and the migrated
schema differ). A developer writes one with ``CONTINUUM_DATABASE_URL=<a database at head>
alembic -c control_plane/migrations/alembic.ini revision --autogenerate --rev-id NNNN -m
"..."``, then reviews it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from control_plane.migrations.baseline import baseline_metadata

log = logging.getLogger(__name__)
# Alembic says "Context impl ...", "Will assume transactional DDL" at INFO on every open;
# upgrade() logs what it changed itself.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
"""The first revision: the schema of the releases before migrations."""
LOCK_KEY = 0x636F6E742D6D6967  # b"cont-mig"
"""PostgreSQL advisory lock key held while a replica upgrades; not the leader's
(:data:`control_plane.leader.ADVISORY_KEY`, held for as long as a replica leads)."""
_in_process = threading.Lock()  # Alembic's context and op are process-wide proxies


class SchemaMismatch(RuntimeError):
    """The database cannot be brought to this release's schema: made by a Continuum from
    before migrations whose tables lack columns of the baseline, or at a revision this
    release does not know (a newer release migrated it)."""


def config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for this package's migrations (no ``alembic.ini``);
    ``connection``, when given, is the one the commands run on."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def head() -> str:
    """The newest revision this release knows, e.g. ``"0001"``."""
    rev = ScriptDirectory.from_config(config()).get_current_head()
    assert rev is not None, "no migrations in control_plane/migrations/versions"
    return rev


def current(engine: Engine) -> str | None:
    """The database's revision; None for a database never migrated (empty, or made by a
    release from before migrations)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@dataclass(frozen=True)
class Upgraded:
    """What :func:`upgrade` did."""

    before: str | None
    """The revision before; None: an empty database, or one made before migrations."""
    after: str
    """The revision now (:func:`head`)."""
    adopted: bool = False
    """The database was made by a release from before migrations and stamped at
    :data:`BASELINE` before the upgrade."""


def upgrade(engine: Engine) -> Upgraded:
    """Bring the database to :func:`head`.

    One transaction; on PostgreSQL it first takes the advisory lock :data:`LOCK_KEY`
    (transaction-scoped), so replicas starting together migrate once and the others find
    the database at head (PostgreSQL's DDL is transactional: a failed upgrade leaves
    nothing); within one process, upgrades run one at a time. On SQLite only one process
    opens the database. A database made by a
    release from before migrations (its tables, no ``alembic_version``) is adopted: the
    baseline tables it lacks are created and it is stamped at :data:`BASELINE`, then
    upgraded.

    Raises:
        SchemaMismatch: such a database lacks baseline columns (named in the message),
            or the database is at a revision this release does not know.
    """
    with _in_process, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        before = MigrationContext.configure(conn).get_current_revision()
        if before == head():
            return Upgraded(before, before)
        cfg = config(conn)
        adopted = before is None and _adopt_legacy(conn)
        if adopted:
            command.stamp(cfg, BASELINE)
            log.info("database %s: adopted the schema of a release from before migrations "
                     "(stamped %s)", _name(engine), BASELINE)
        try:
            command.upgrade(cfg, "head")
        except CommandError as e:
            raise SchemaMismatch(
                f"the database {_name(engine)} is at revision {before}, which this release "
                f"does not know (its newest is {head()}): a newer Continuum migrated it; "
                f"run that release ({e})") from None
        log.info("database %s: upgraded from %s to %s", _name(engine),
                 before or ("before migrations" if adopted else "empty"), head())
        return Upgraded(before, head(), adopted)


def _adopt_legacy(conn: Connection) -> bool:
    """True if ``conn``'s database holds tables of the baseline (and so was made by a
    release from before migrations); creates the baseline tables it lacks (as
    ``create_all`` did). Raises :class:`SchemaMismatch` naming the baseline columns
    the existing tables lack."""
    base = baseline_metadata()
    have = inspect(conn)
    present = [t for t in base.sorted_tables if have.has_table(t.name)]
    if not present:
        return False
    missing = [f"{t.name}.{c.name}" for t in present
               for c in t.columns if c.name not in {x["name"] for x in have.get_columns(t.name)}]
    if missing:
        raise SchemaMismatch(
            f"the database {_name(conn.engine)} was made by an older Continuum (missing "
            f"column(s): {', '.join(missing)}) than the first with migrations; it cannot be "
            "upgraded: start with a new state directory (or database)")
    base.create_all(conn)
    return True


def _name(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
