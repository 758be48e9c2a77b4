"""Fixtures for the Slurm tests: a real single-node Slurm and a live control plane.

* ``slurm`` (session, one per Slurm release 22.05/24.11/26.05) and ``slurm_accounting``:
  munged, slurmctld, slurmd and slurmrestd (JWT) started by ``deploy/dev/slurm.sh
  --release R`` in a temporary directory on loopback, stopped at the end. The fixtures
  are defined in ``tests/conftest.py`` (one definition, so the Slurm tests and the adapter
  contract suite share one cluster per release); :class:`SlurmCluster` is here.
* ``live_cp`` (function): a factory of real :class:`ControlPlane` processes-in-threads
  serving the API under uvicorn on a free port (Slurm jobs fetch and upload artifacts
  over real HTTP), on a state directory that survives a restart.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from adapters.slurm.client import SlurmRestClient, TokenSource
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from tests.conftest import REPO
from tests.helpers import admin_headers, admin_token, wait_for

SLURM_SH = REPO / "deploy" / "dev" / "slurm.sh"


@dataclass
class SlurmCluster:
    """A running single-node Slurm; ``env`` is what ``slurm.sh start`` wrote to DIR/env."""

    dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def sh(self, *args: str, timeout: float = 90) -> str:
        r = subprocess.run([str(SLURM_SH), *args], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"slurm.sh {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def start(self, release: str = "22.05", accounting: bool = False,
              pivot_root: bool = False) -> None:
        """``slurm.sh start DIR --release R [--accounting] [--pivot-root]``; on a fresh
        machine this first builds R's root (minutes: ``make test-deps`` does it beforehand,
        with progress). ``pivot_root`` (24.11+): the daemons run under pivot_root in a
        private mount namespace instead of chroot, so jobs may use Apptainer.
        Raises RuntimeError (slurm.sh's reason) or subprocess.TimeoutExpired."""
        self.sh("start", str(self.dir), "--release", release,
                *(["--accounting"] if accounting else []),
                *(["--pivot-root"] if pivot_root else []), timeout=1800)
        self.env = dict(line.split("=", 1) for line in (self.dir / "env").read_text().splitlines())

    def stop(self) -> None:
        """``slurm.sh stop`` (daemons, then its mounts) and remove the directory."""
        subprocess.run([str(SLURM_SH), "stop", str(self.dir)], capture_output=True, text=True,
                       timeout=90, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def release(self) -> str:
        """The Slurm version running, e.g. ``24.11.5``."""
        return self.env["SLURM_RELEASE"]

    @property
    def api(self) -> str:
        """The newest API version slurmrestd serves (``v0.0.38`` on 22.05, the newest
        data_parser on 24.11+), from ``SLURM_DATA_PARSERS``."""
        return self.env["SLURM_DATA_PARSERS"].split(",")[0]

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``argv`` where the daemons run (in the release's root for 24.11+), with
        ``SLURM_CONF`` set: ``slurm.sh run DIR argv...`` (not checked)."""
        return subprocess.run([str(SLURM_SH), "run", str(self.dir), *argv],
                              capture_output=True, text=True, timeout=timeout, check=False)

    @property
    def url(self) -> str:
        return self.env["SLURMRESTD_URL"]

    @property
    def user(self) -> str:
        return self.env["SLURM_JOB_USER"]

    @property
    def key(self) -> str:
        """Path of the cluster's jwt_key (readable here, the tests run as root)."""
        return self.env["SLURM_JWT_KEY"]

    @property
    def key_b64(self) -> str:
        """The jwt_key as uploaded over the API: base64 of the file."""
        return base64.b64encode(Path(self.key).read_bytes()).decode()

    @property
    def workdir(self) -> str:
        return self.env["SLURM_WORKDIR"]

    def token(self, lifespan: int = 3600) -> str:
        return self.sh("token", str(self.dir), self.user, str(lifespan))

    def config(self, **over: Any) -> dict[str, Any]:
        """A site config for this cluster (minted tokens, fast polling). slurm.sh runs
        slurmctld with SlurmUser=root, so ``slurmUser`` says so."""
        cfg: dict[str, Any] = {"url": self.url, "user": self.user, "jwtKey": self.key_b64,
                               "slurmUser": "root", "partitions": ["debug"],
                               "workdir": self.workdir, "pollInterval": 0.2}
        cfg.update(over)
        return {k: v for k, v in cfg.items() if v is not None}

    def gate(self) -> Path:
        """A path jobs (running as the Slurm user) can see appear: touch it to let a job go."""
        return Path(self.workdir) / f"gate-{uuid.uuid4().hex[:10]}"

    def client(self) -> SlurmRestClient:
        """A slurmrestd client of this cluster (the served version's dialect, minted
        tokens); the caller closes it."""
        tokens = TokenSource(self.user, key=Path(self.key).read_bytes(), lifetime_s=60)
        return SlurmRestClient(url=self.url, socket=None, tokens=tokens)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job slurmctld knows, through slurmrestd, in the legacy shape
        (``job_state`` a string) whatever the version served."""
        c = self.client()
        try:
            return c.jobs() or []
        finally:
            c.close()

    def jobs_named(self, name: str) -> list[dict[str, Any]]:
        return [j for j in self.jobs() if j.get("name") == name]


class LiveControlPlane:
    """A ControlPlane serving its API with uvicorn in a thread on 127.0.0.1:``port``."""

    def __init__(self, state_dir: Path, port: int, **settings: Any) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.settings = Settings(state_dir=state_dir, host="127.0.0.1", port=port,
                                 reconcile_interval_s=0.1, inventory_interval_s=0.3,
                                 retry_backoff_s=0.2, **settings)
        self.cp = ControlPlane(self.settings)
        self.http = httpx.Client(base_url=self.url, timeout=15, headers=admin_headers(self.cp))
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveControlPlane:
        self.cp.start()
        config = uvicorn.Config(self.cp.app, host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        sock = port_socket(self.port)  # bound here: the factory's reservation shares it
        sock.listen(128)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True)
        self._thread.start()
        wait_for(lambda: self._server is not None and self._server.started, timeout=20,
                 message=f"uvicorn listening on {self.url}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.cp.stop()
        self.http.close()

    def get(self, path: str, **kw: Any) -> Any:
        r = self.http.get(path, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def register(self, name: str, config: dict[str, Any], **spec: Any) -> httpx.Response:
        return self.http.post("/v1/sites", json={"name": name, "kind": "slurm", "tier": "hpc",
                                                 "config": config, **spec})

    def submit(self, tasks: list[dict[str, Any]], name: str = "wf") -> str:
        doc = {"apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": name},
               "spec": {"tasks": tasks}}
        r = self.http.post("/v1/workflows", json=doc)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def workflow(self, wid: str) -> dict[str, Any]:
        return self.get(f"/v1/workflows/{wid}")  # type: ignore[no-any-return]

    def wait_workflow(self, wid: str, states: tuple[str, ...] = ("Succeeded", "Failed",
                                                                  "Cancelled"),
                      timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            wf = self.workflow(wid)
            return wf if wf["state"] in states else None
        return wait_for(done, timeout=timeout, interval=0.1,
                        message=lambda: f"workflow {wid} reaching {states}: {self.workflow(wid)}")

    def runs(self, wid: str, task: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.workflow(wid)["runs"] if task is None or r["task"] == task]

    def wait_run(self, wid: str, task: str, states: tuple[str, ...],
                 timeout: float = 60) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((r for r in self.runs(wid, task) if r["state"] in states), None)
        return wait_for(found, timeout=timeout, interval=0.1,
                        message=lambda: f"a run of {task} reaching {states}: {self.runs(wid, task)}")


def port_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:``port`` (0: a free one) with SO_REUSEPORT, so
    several of this process's sockets can hold the same port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@dataclass
class LiveFactory:
    """Control planes started one after the other on one state directory and one port.
    The port stays reserved (a bound, not listening, socket) from the factory's creation
    to :meth:`close`, so no other process and no outgoing connection's ephemeral port
    takes it between a free-port probe and the bind, or between two starts."""

    tmp: Path
    started: list[LiveControlPlane] = field(default_factory=list)
    reservation: socket.socket = field(default_factory=port_socket)
    port: int = 0

    saved_token: str | None = field(default_factory=lambda: os.environ.get("CONTINUUM_TOKEN"))

    def __post_init__(self) -> None:
        self.port = self.reservation.getsockname()[1]

    def __call__(self, **settings: Any) -> LiveControlPlane:
        """A started control plane on the factory's state dir and port (same each call);
        until :meth:`close`, ``CONTINUUM_TOKEN`` is its admin token, for the CLI."""
        lcp = LiveControlPlane(self.tmp / "state", self.port,
                               public_url=f"http://127.0.0.1:{self.port}", **settings).start()
        self.started.append(lcp)
        os.environ["CONTINUUM_TOKEN"] = admin_token(lcp.cp)
        return lcp

    def close(self) -> None:
        for lcp in self.started:
            if lcp._thread is not None and lcp._thread.is_alive():
                lcp.stop()
        self.reservation.close()
        if self.saved_token is None:
            os.environ.pop("CONTINUUM_TOKEN", None)
        else:
            os.environ["CONTINUUM_TOKEN"] = self.saved_token


@pytest.fixture
def live_cp(tmp_path: Path) -> Iterator[LiveFactory]:
    factory = LiveFactory(tmp_path)
    yield factory
    factory.close()
