"""deploy/dev/postgres.sh on its own: ``start`` makes a cluster listening on 127.0.0.1
only (its port printed and kept; a second ``start`` changes nothing), ``url`` names a
database psycopg connects to, ``stop`` ends it and ``status`` says so; a stopped cluster
starts again with its data."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import POSTGRES_SH, free_port


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(POSTGRES_SH), *args], capture_output=True, text=True, timeout=120)


def query(url: str, sql: str) -> object:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            r = c.execute(text(sql))
            return r.scalar() if r.returns_rows else None
    finally:
        engine.dispose()


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="continuum-pg-test-"))
    yield d
    sh("stop", str(d))
    shutil.rmtree(d, ignore_errors=True)


def test_start_url_stop(pg_dir: Path) -> None:
    r = sh("start", str(pg_dir))
    assert r.returncode == 0, r.stderr
    port = r.stdout.strip()
    assert port.isdigit() and (pg_dir / "port").read_text().strip() == port
    again = sh("start", str(pg_dir))  # already running: the same port, nothing else
    assert (again.returncode, again.stdout.strip()) == (0, port), again.stderr
    assert sh("status", str(pg_dir)).returncode == 0
    url = sh("url", str(pg_dir), "continuum").stdout.strip()
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{port}/continuum"
    admin = sh("url", str(pg_dir)).stdout.strip()
    assert admin.endswith(f":{port}/postgres")
    assert query(admin, "SHOW listen_addresses") == "127.0.0.1"
    query(admin, "CREATE DATABASE continuum")
    query(url, "CREATE TABLE kept (x int)")
    assert query(url, "SELECT current_database()") == "continuum"

    r = sh("stop", str(pg_dir))
    assert r.returncode == 0, r.stderr
    assert sh("status", str(pg_dir)).returncode != 0
    assert sh("stop", str(pg_dir)).returncode == 0  # stopping a stopped cluster is fine

    assert sh("start", str(pg_dir), port).stdout.strip() == port  # again, with its data
    assert query(url, "SELECT count(*) FROM kept") == 0


def test_a_port_given_is_used_and_a_different_one_for_a_running_cluster_is_refused(
        pg_dir: Path) -> None:
    port = str(free_port())
    r = sh("start", str(pg_dir), port)
    assert (r.returncode, r.stdout.strip()) == (0, port), r.stderr
    other = sh("start", str(pg_dir), str(free_port()))
    assert other.returncode != 0 and f"already runs on port {port}" in other.stderr
    bad = sh("start", str(pg_dir), "nope")
    assert bad.returncode != 0 and "PORT must be a number" in bad.stderr


def test_url_of_a_directory_never_started_says_so(tmp_path: Path) -> None:
    r = sh("url", str(tmp_path))
    assert r.returncode != 0 and "no cluster was started" in r.stderr
