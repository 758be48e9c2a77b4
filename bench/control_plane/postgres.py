"""A private PostgreSQL 15 on loopback for the control-plane benches, through
``deploy/dev/postgres.sh`` (the script the tests use)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy

REPO = Path(__file__).resolve().parents[2]
POSTGRES_SH = REPO / "deploy" / "dev" / "postgres.sh"


class PrivatePostgres:
    """The cluster in ``directory`` (started by :func:`private_postgres`)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of database ``dbname``."""
        return subprocess.run(["bash", str(POSTGRES_SH), "url", str(self.directory), dbname],
                              check=True, capture_output=True, text=True).stdout.strip()

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its SQLAlchemy URL."""
        engine = sqlalchemy.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        return self.url(name)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Start PostgreSQL in a new directory under the system's tmp (one the ``postgres``
    user can reach), yield it, stop it and remove the directory.

    Raises:
        subprocess.CalledProcessError: the script could not start it.
    """
    directory = Path(tempfile.mkdtemp(prefix="continuum-bench-pg-"))
    subprocess.run(["bash", str(POSTGRES_SH), "start", str(directory)], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        yield PrivatePostgres(directory)
    finally:
        subprocess.run(["bash", str(POSTGRES_SH), "stop", str(directory)], check=False,
                       capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)
