"""Shared fixtures: a real Mosquitto broker, ``continuum-agent`` subprocesses, artifacts.

* ``mosquitto`` (session): a private Mosquitto started by ``deploy/dev/mosquitto.sh`` on a
  free loopback port; ``.host``, ``.port``, ``.url``, ``.stop()``, ``.start()``,
  ``.restart()`` (same port, so clients reconnect to it).
* ``agents`` (function): ``agents.spawn(device_id, *args)`` starts
  ``python -m edge_agent.cli run`` against the broker; every agent is killed at teardown.
  Agents trust :data:`tests.helpers.TEST_COMMAND_KEY` (what ``observer`` signs with)
  unless ``agents.trust(state_dir)`` names a control plane's state directory; as root
  they run tasks as root (``--run-as root``: tests put marker files in root's private
  temporary directories) unless ``spawn(run_as=...)`` says otherwise.
* ``observer`` (function): a :class:`tests.helpers.Observer` on the broker.
* ``artifacts`` (function): a :class:`tests.helpers.ArtifactServer` (GET inputs, PUT outputs).
* ``run_user`` (function): the ``continuum-run`` system user agents run tasks as by
  default (created as the installer does, if missing); ``open_state_dir``: an agent state
  directory that user can traverse to (pytest's temporary directories are root-only).
* ``slurm`` (session, parametrised over :data:`SLURM_RELEASES` 22.05, 24.11, 26.05): the
  real single-node Slurm (:class:`SlurmCluster`: munged, slurmctld, slurmd and slurmrestd
  with JWT, started by ``deploy/dev/slurm.sh --release R`` in a temporary directory on
  loopback, stopped at the end). Defined here, once, so every test that needs Slurm (the
  Slurm adapter tests, the adapter contract suite, the first-hour log checks) shares one
  cluster per release per session; ``-k slurm-22.05`` selects one release.
* ``slurm_accounting`` (session): the same with slurmdbd on MariaDB (``--accounting``).
* ``postgres`` (session): a private PostgreSQL 15 started by ``deploy/dev/postgres.sh`` in
  a temporary directory on a free loopback port (:class:`Postgres`: ``.url(dbname)``,
  ``.new_database()`` → the URL of a new empty database, ``.drop_database(url)``,
  ``.stop()``, ``.start()``, ``.restart()`` on the same port), stopped at the end.
* ``database_url`` (function, parametrised ``db-sqlite`` / ``db-postgresql``): the URL
  of a fresh empty database for one test: SQLite ``continuum.db`` in ``tmp_path`` (where
  the control plane's default puts it for ``state_dir=tmp_path``), or a new database on
  the session's PostgreSQL (dropped afterwards). Give it to ``Settings(database_url=...)``
  or ``Store(...)`` so a test runs on both databases.
* ``kube_cluster`` (session): the real Kubernetes of ``deploy/dev/kube.sh`` (etcd,
  kube-apiserver, controller-manager, scheduler, kwok nodes kwok-node-1..3; see
  :class:`tests.adapters.kubernetes.cluster.KubeCluster`), started once per session in a
  temporary directory on loopback and stopped at the end. Its binaries are built by
  ``make test`` (``kube.sh build``) beforehand; a missing build fails here with the reason.

Wait on conditions with :func:`tests.helpers.wait_for`, never with a fixed sleep.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from control_plane.keys import command_public_key
from edge_agent.runtime import DEFAULT_RUN_USER
from tests.helpers import TEST_COMMAND_PUBLIC, ArtifactServer, Observer
from tests.monitoring.prometheus_fixture import prometheus  # noqa: F401

if TYPE_CHECKING:
    from tests.adapters.kubernetes.cluster import KubeCluster
    from tests.adapters.slurm.conftest import SlurmCluster

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO_SH = REPO / "deploy" / "dev" / "mosquitto.sh"
POSTGRES_SH = REPO / "deploy" / "dev" / "postgres.sh"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mosquitto:
    """A Mosquitto broker on 127.0.0.1:``port``, controlled through ``mosquitto.sh``."""

    dir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        r = subprocess.run([str(MOSQUITTO_SH), "start", str(self.dir), str(self.port)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"could not start Mosquitto on port {self.port} with "
                               f"{MOSQUITTO_SH}: {r.stderr.strip() or r.stdout.strip()}")

    def stop(self) -> None:
        subprocess.run([str(MOSQUITTO_SH), "stop", str(self.dir)], capture_output=True,
                       text=True, timeout=30, check=False)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A real Mosquitto for the test session (fails with the script's reason if it can't)."""
    broker = Mosquitto(dir=tmp_path_factory.mktemp("mosquitto"), port=free_port())
    try:
        broker.start()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield broker
    broker.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto of this test's own, which it may stop, restart or fill with
    retained messages without disturbing the session's."""
    broker = Mosquitto(dir=tmp_path / "own-broker", port=free_port())
    broker.dir.mkdir()
    broker.start()
    yield broker
    broker.stop()


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``dir`` on 127.0.0.1:``port``, controlled through
    ``postgres.sh`` (superuser ``postgres``, no password)."""

    dir: Path
    port: int = 0
    """0 until started: ``postgres.sh`` picks a free port, kept across restarts."""

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL of database ``dbname``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        cmd = [str(POSTGRES_SH), "start", str(self.dir)] + ([str(self.port)] if self.port else [])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"could not start PostgreSQL with {POSTGRES_SH}: "
                               f"{r.stderr.strip() or r.stdout.strip()}")
        self.port = int(r.stdout.split()[-1])

    def stop(self) -> None:
        subprocess.run([str(POSTGRES_SH), "stop", str(self.dir)], capture_output=True,
                       text=True, timeout=120, check=False)

    def restart(self) -> None:
        """Fast stop (every connection is cut) and start on the same port."""
        self.stop()
        self.start()

    def _admin(self, sql: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                c.execute(text(sql))
        finally:
            engine.dispose()

    def new_database(self) -> str:
        """CREATE DATABASE with a new unique name; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """DROP DATABASE of :meth:`new_database`'s ``url``, ending its open sessions."""
        name = url.rsplit("/", 1)[1]
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL 15 for the test session (fails with the script's reason)."""
    # not under pytest's private tmp: the server runs as the OS user postgres
    server = Postgres(dir=Path(tempfile.mkdtemp(prefix="continuum-pg-")))
    try:
        server.start()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
        pytest.fail(str(e))
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


DATABASES = ("sqlite", "postgresql")


@pytest.fixture(params=DATABASES, ids=lambda d: f"db-{d}")
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database for this test, on each of :data:`DATABASES`."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'continuum.db'}"
        return
    server: Postgres = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.drop_database(url)


@dataclass
class AgentProcess:
    """One ``continuum-agent`` subprocess; its combined output goes to ``log_path``."""

    device_id: str
    state_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL if it lingers. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)


_AS_ROOT = "root" if os.geteuid() == 0 else None


@dataclass
class AgentFactory:
    broker: Mosquitto
    tmp: Path
    spawned: list[AgentProcess] = field(default_factory=list)
    command_key: str = TEST_COMMAND_PUBLIC
    """The base64 command key spawned agents verify commands with."""

    def trust(self, state_dir: Path) -> None:
        """Make agents spawned from now on trust the control plane of ``state_dir`` (its
        key is generated there now if the control plane has not started yet)."""
        self.command_key = base64.b64encode(command_public_key(state_dir)).decode()

    def spawn(self, device_id: str | None = None, *args: str, state_dir: Path | None = None,
              telemetry_interval: float = 0.5, env: dict[str, str] | None = None,
              run_as: str | None = _AS_ROOT, command_key: str | None = None
              ) -> AgentProcess:
        """Start an agent (``python -m edge_agent.cli run``) with extra CLI ``args`` and
        extra environment ``env`` (e.g. another ``PATH`` for its runs); ``run_as`` is its
        ``--run-as`` (``None``: the agent's default), ``command_key`` its
        ``--command-key`` (default :attr:`command_key`; ``""``: none given)."""
        device_id = device_id or f"dev-{uuid.uuid4().hex[:8]}"
        state_dir = state_dir or self.tmp / f"agent-{device_id}"
        log_path = self.tmp / f"agent-{device_id}-{len(self.spawned)}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        argv = [sys.executable, "-m", "edge_agent.cli", "run", "--broker", self.broker.url,
                "--device-id", device_id, "--state-dir", str(state_dir),
                "--telemetry-interval", str(telemetry_interval), "--kill-grace", "1",
                "--reconnect-max", "1", "--log-level", "INFO", *args]
        key = self.command_key if command_key is None else command_key
        if key:
            argv += ["--command-key", key]
        if run_as is not None:
            argv += ["--run-as", run_as]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        agent = AgentProcess(device_id, state_dir, log_path, proc)
        self.spawned.append(agent)
        return agent

    def close(self) -> None:
        for a in self.spawned:
            if a.proc.poll() is None:
                a.proc.kill()
                a.proc.wait(timeout=10)


@pytest.fixture
def agents(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[AgentFactory]:
    """Spawns ``continuum-agent`` subprocesses; all are killed at teardown."""
    factory = AgentFactory(mosquitto, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def observer(mosquitto: Mosquitto) -> Iterator[Observer]:
    """An MQTT client recording every protocol message on the broker."""
    obs = Observer(mosquitto.host, mosquitto.port)
    yield obs
    obs.close()


@pytest.fixture
def artifacts() -> Iterator[ArtifactServer]:
    """A loopback HTTP server for artifact GETs (inputs) and PUTs (outputs)."""
    server = ArtifactServer().start()
    yield server
    server.stop()


SLURM_RELEASES = ("22.05", "24.11", "26.05")
"""The Slurm releases the live Slurm tests run against (``slurm.sh --release``): 22.05 from
this machine's packages, 24.11 and 26.05 in Debian roots under the cache directory."""

SLURM_ACCOUNTING_RELEASE = "24.11"
"""The release of the ``slurm_accounting`` cluster (slurmdbd on MariaDB)."""


class SlurmBeds:
    """The session's Slurm clusters, one per (release, accounting), each started on first
    use and stopped by :meth:`close`."""

    def __init__(self) -> None:
        self.started: dict[tuple[str, bool], SlurmCluster] = {}

    def get(self, release: str, accounting: bool = False) -> SlurmCluster:
        """The running cluster of ``release`` (``"22.05"``, ``"24.11"``, ``"26.05"``),
        started now if needed; fails the test with slurm.sh's reason if it cannot start."""
        from tests.adapters.slurm.conftest import SLURM_SH, SlurmCluster  # it imports this module

        key = (release, accounting)
        if key not in self.started:
            # not under pytest's private tmp: slurmrestd and the jobs run as another user
            cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix=f"continuum-slurm-{release}-")))
            try:
                cluster.start(release, accounting=accounting)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                cluster.stop()
                pytest.fail(f"could not start Slurm {release} with {SLURM_SH}: {e}")
            self.started[key] = cluster
        return self.started[key]

    def close(self) -> None:
        for cluster in self.started.values():
            cluster.stop()
        self.started.clear()


@pytest.fixture(scope="session")
def slurm_beds() -> Iterator[SlurmBeds]:
    """Every Slurm cluster the session started; all are stopped at its end."""
    beds = SlurmBeds()
    yield beds
    beds.close()


@pytest.fixture(scope="session", params=SLURM_RELEASES, ids=lambda r: f"slurm-{r}")
def slurm(request: pytest.FixtureRequest, slurm_beds: SlurmBeds) -> SlurmCluster:
    """A real single-node Slurm of each release in :data:`SLURM_RELEASES` (tests using it
    run once per release, ids ``[slurm-22.05]`` …); each started once per session."""
    return slurm_beds.get(request.param)


@pytest.fixture(scope="session")
def slurm_accounting(slurm_beds: SlurmBeds) -> SlurmCluster:
    """A real single-node Slurm :data:`SLURM_ACCOUNTING_RELEASE` with slurmdbd on MariaDB
    (``slurm.sh --accounting``): ``sacct`` and ``/slurmdb/<version>/jobs`` list finished
    jobs of account ``continuum``."""
    return slurm_beds.get(SLURM_ACCOUNTING_RELEASE, accounting=True)


# ---------------------------------------------------------------- real Kubernetes


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """The test bed's real Kubernetes for the session (fails with the script's reason)."""
    from tests.adapters.kubernetes.cluster import KUBE_SH, KubeCluster

    cluster = KubeCluster(Path(tempfile.mkdtemp(prefix="continuum-kube-")))
    try:
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        subprocess.run([str(KUBE_SH), "stop", str(cluster.dir)], capture_output=True,
                       timeout=60, check=False)
        shutil.rmtree(cluster.dir, ignore_errors=True)
        pytest.fail(f"could not start Kubernetes with {KUBE_SH}: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture
def run_user() -> pwd.struct_passwd:
    """The ``continuum-run`` system user (created as the installer does, if missing)."""
    if os.geteuid() != 0:
        pytest.fail("this test creates a system user and must run as root")
    try:
        return pwd.getpwnam(DEFAULT_RUN_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                        "/nonexistent", "--shell", "/usr/sbin/nologin", DEFAULT_RUN_USER],
                       check=True, capture_output=True, timeout=30)
        return pwd.getpwnam(DEFAULT_RUN_USER)


@pytest.fixture
def open_state_dir() -> Iterator[Path]:
    """A state directory the run user can traverse to (pytest's are root-only)."""
    d = Path(tempfile.mkdtemp(prefix="continuum-agent-"))
    d.chmod(0o711)
    yield d / "state"
    shutil.rmtree(d, ignore_errors=True)
