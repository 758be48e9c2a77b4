"""The chaos harness: ``continuum server`` replicas as subprocesses, a workload across
real backends, and what the backends themselves recorded.

* :class:`Replicas` starts N ``python -m control_plane.cli server`` subprocesses with
  given settings (``CONTINUUM_*`` environment) on one state directory they share (keys,
  artifacts, the admin token, the twin's record) and one database; it knows which one
  leads (``/leaderz``), kills it with SIGKILL (:meth:`Replicas.kill_leader`) and
  measures the takeover: the time from the kill until a replica answers as the leader
  whose reconciler has completed a cycle (``/readyz`` 200: on the leader it answers 503
  until the loop's first cycle ends). With several replicas on PostgreSQL a follower
  takes over and the killed one is restarted as a follower; with one replica on SQLite
  a kill is a crash and a restart of the same process (crash recovery), and the takeover
  includes the process start. :meth:`Replicas.restart_database` restarts PostgreSQL.
* :func:`chaos_workflow` is one workflow of the workload: four short tasks over a device
  of the MQTT fleet, the real Slurm and a simulated site.
* :class:`Backends` reads what ran from each backend's own side — each agent's log (its
  ``run <id>: started pid`` and final-state lines) and run directory, Slurm's job table
  through slurmrestd (job name ``continuum-<run id>``), the twin's append-only record
  (:func:`adapters.sim.read_record`) — and :func:`problems` compares it with the API:
  every accepted workflow Succeeded, every task executed exactly once on a backend (a run
  re-submitted under its run id after a crash must not run again; a run that failed
  before reaching any backend and was retried is the only way a task has several runs),
  and every run's final state in the API equals the backend's.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from adapters.sim import read_record, record_state
from adapters.slurm.adapter import JOB_STATE_TABLE
from tests.adapters.slurm.conftest import SlurmCluster
from tests.conftest import REPO, AgentProcess, free_port
from tests.helpers import admin_token, wait_for

TERMINAL = ("Succeeded", "Failed", "Cancelled")

SERVER_ENV = {
    "CONTINUUM_RECONCILE_INTERVAL_S": "0.2",
    "CONTINUUM_INVENTORY_INTERVAL_S": "0.5",
    "CONTINUUM_RETRY_BACKOFF_S": "0.2",
    "CONTINUUM_MODEL_BOOTSTRAP_SAMPLES": "200",
}
"""Settings of every replica: a fast loop (a takeover is measured in its cycles) and a
small predictor bootstrap (it is trained at every start)."""


# ---------------------------------------------------------------- replicas


def listening_port() -> int:
    """A free port below the kernel's ephemeral range (``ip_local_port_range``, 32768+
    here): a killed replica restarts on its port, and a port from that range can meanwhile
    be the source port of any outgoing connection (seen: "port … is already in use" with
    no listener, on the 50-kill test)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


@dataclass
class Replica:
    """One ``continuum server`` subprocess on 127.0.0.1:``port``; its output goes to
    ``log_path`` (appended across restarts)."""

    index: int
    port: int
    state_dir: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "control_plane.cli", "server", "--host", "127.0.0.1",
                "--port", str(self.port), "--state-dir", str(self.state_dir),
                "--log-level", "info"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as out:
            out.write(f"---- start {self.starts + 1} of replica {self.index}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def _answers_200(self, path: str) -> bool:
        if not self.alive():
            return False
        try:
            return httpx.get(f"{self.url}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> bool:
        """``/readyz`` answers 200: the store answers and a reconcile cycle completed."""
        return self._answers_200("/readyz")

    def serves(self) -> bool:
        """The process answers HTTP (``/healthz``), whether or not its loop has cycled."""
        return self._answers_200("/healthz")

    def is_leader(self) -> bool:
        """This replica leads (``/leaderz`` role) and its reconciler has completed a
        cycle (``/readyz`` 200: on the leader it needs one)."""
        if not self.alive():
            return False
        try:
            role = httpx.get(f"{self.url}/leaderz", timeout=2).json().get("role")
        except (httpx.HTTPError, ValueError):
            return False
        return role == "leader" and self.ready()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Replicas:
    """``n`` replicas sharing ``tmp/state`` and one database (SQLite in the state
    directory when ``database_url`` is None: then ``n`` must be 1)."""

    tmp: Path
    n: int = 1
    database_url: str | None = None
    postgres: Any = None
    """The PostgreSQL server of ``database_url`` (the suite's ``postgres`` fixture: its
    ``restart()``), for :meth:`restart_database`."""
    env: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    takeovers: list[float] = field(default_factory=list)
    """Seconds from each :meth:`kill_leader`'s SIGKILL to a new leader, in order."""
    serving: list[float] = field(default_factory=list)
    """One replica: seconds from each SIGKILL until the restarted process answered HTTP
    (the part of the takeover that is the process start)."""

    def __post_init__(self) -> None:
        if self.database_url is None and self.n != 1:
            raise ValueError("SQLite supports one replica only: give database_url for n > 1")
        self.state_dir = self.tmp / "state"
        env = {**SERVER_ENV, **self.env}
        if self.database_url is not None:
            env["CONTINUUM_DATABASE_URL"] = self.database_url
        for i in range(self.n):
            port = listening_port()
            self.replicas.append(Replica(i, port, self.state_dir, self.tmp / f"replica-{i}.log",
                                         {**env, "CONTINUUM_PUBLIC_URL": f"http://127.0.0.1:{port}"}))

    def start(self, timeout: float = 60) -> Replicas:
        """Start the first replica, wait for it to lead (it makes the keys and the schema
        in the shared state directory and database), then the others as followers."""
        self.replicas[0].start()
        self.leader(timeout)
        for r in self.replicas[1:]:
            r.start()
            wait_for(r.serves, timeout=timeout, interval=0.05, message=self._why_no_leader)
        return self

    def leader(self, timeout: float = 60) -> Replica:
        """The replica that leads (waiting up to ``timeout`` s for one).

        Raises:
            AssertionError: none leads within ``timeout``.
        """
        return wait_for(lambda: next((r for r in self.replicas if r.is_leader()), None),
                        timeout=timeout, interval=0.02, message=self._why_no_leader)

    def _why_no_leader(self) -> str:
        return "a leader; replicas: " + "; ".join(
            f"#{r.index} {'alive' if r.alive() else 'dead'}, log tail: {r.logs()[-1500:]!r}"
            for r in self.replicas)

    def kill_leader(self, timeout: float = 60) -> float:
        """SIGKILL the leader; returns (and records in :attr:`takeovers`) the seconds
        until a replica leads again. One replica: it is restarted at once, so the
        takeover is crash recovery (process start + the first reconcile cycle). Several:
        a follower takes over; the killed one is restarted after the takeover and this
        returns once it serves again (a follower, ready for the next kill)."""
        victim = self.leader(timeout)
        t0 = time.monotonic()
        victim.kill()
        if self.n == 1:
            victim.start()
            wait_for(victim.serves, timeout=timeout, interval=0.02, message=self._why_no_leader)
            self.serving.append(time.monotonic() - t0)
        self.leader(timeout)
        took = time.monotonic() - t0
        if self.n > 1:
            victim.start()
            wait_for(victim.serves, timeout=timeout, interval=0.05, message=self._why_no_leader)
        self.takeovers.append(took)
        return took

    def restart_database(self) -> float:
        """Restart the PostgreSQL server under the replicas (every connection cut);
        returns the seconds it was down.

        Raises:
            ValueError: the replicas run on SQLite, which has no server to restart."""
        if self.postgres is None:
            raise ValueError(f"no database server to restart: the replicas use "
                             f"{self.database_url or 'SQLite in ' + str(self.state_dir)}")
        t0 = time.monotonic()
        self.postgres.restart()
        return time.monotonic() - t0

    def token(self) -> str:
        return admin_token(self.state_dir)

    def api(self) -> Api:
        """A client of whichever replica answers (every replica serves the API)."""
        return Api(self)

    def stop(self) -> None:
        for r in self.replicas:
            r.kill()

    def takeover_summary(self) -> dict[str, Any]:
        t = self.takeovers
        return {"kills": len(t), "replicas": self.n,
                "database": "sqlite" if self.database_url is None else self.database_url.split(":")[0],
                "takeover_s": {"median": round(median(t), 3) if t else None,
                               "max": round(max(t), 3) if t else None,
                               "all": [round(x, 3) for x in t]},
                **({"restartServing_s": {"median": round(median(self.serving), 3),
                                         "max": round(max(self.serving), 3)}}
                   if self.serving else {})}


class Api:
    """Admin requests to the first replica that answers; a request is retried on
    another replica (or the same one, restarted) while none answers, up to ``timeout``.
    Only reads are retried across a connection error: a POST whose answer was lost may
    have been accepted, so :meth:`submit` is done only while a leader is known to answer."""

    def __init__(self, replicas: Replicas, timeout: float = 60) -> None:
        self.replicas = replicas
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {replicas.token()}"}

    def get(self, path: str, **params: Any) -> Any:
        last: list[str] = []

        def attempt() -> Any:
            for r in self.replicas.replicas:
                try:
                    resp = httpx.get(f"{r.url}{path}", params=params, headers=self.headers,
                                     timeout=10)
                except httpx.HTTPError as e:
                    last[:] = [f"replica {r.index}: {e!r}"]
                    continue
                assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text}"
                return resp.json()
            return None
        return wait_for(attempt, timeout=self.timeout, interval=0.1,
                        message=lambda: f"GET {path} answered by a replica: {last}")

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.replicas.leader()
        resp = httpx.post(f"{r.url}{path}", json=body, headers=self.headers, timeout=30)
        assert resp.status_code == 201, f"POST {path}: {resp.status_code} {resp.text}"
        return resp.json()

    def submit(self, doc: dict[str, Any]) -> str:
        return str(self.post("/v1/workflows", doc)["id"])

    def workflow(self, wid: str) -> dict[str, Any]:
        return self.get(f"/v1/workflows/{wid}")  # type: ignore[no-any-return]

    def wait_all(self, wids: Iterable[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Every workflow of ``wids`` once all are terminal.

        Raises:
            AssertionError: some are not terminal after ``timeout`` s (says which, how).
        """
        done: dict[str, dict[str, Any]] = {}
        todo = list(wids)

        def all_done() -> bool:
            for wid in [w for w in todo if w not in done]:
                wf = self.workflow(wid)
                if wf["state"] not in TERMINAL:
                    return False
                done[wid] = wf
            return True

        def stuck() -> str:
            left = [self.workflow(w) for w in todo if w not in done]
            return f"{len(left)} workflows to end; first: " + json.dumps(left[:2])[:4000]
        wait_for(all_done, timeout=timeout, interval=0.25, message=stuck)
        return done


# ---------------------------------------------------------------- the workload


def chaos_workflow(i: int, fleet: str = "fleet", hpc: str = "hpc", twin: str = "twin"
                   ) -> dict[str, Any]:
    """Workflow ``chaos-<i>``: four short tasks, ``edge`` (a device) → ``hpc`` (Slurm)
    and ``twin`` (the simulated site, 0.2 s) → ``report`` (a device). Each command
    sleeps a fraction of a second, so a kill often lands while something runs."""
    device = {"resources": {"cpu": "100m", "memory": "16Mi"},
              "constraints": {"sites": [fleet], "tiers": ["device"]}}
    return {
        "apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": f"chaos-{i}"},
        "spec": {"tasks": [
            {"name": "edge", "command": ["sh", "-c", "sleep 0.3"], **device},
            {"name": "hpc", "command": ["sh", "-c", "sleep 0.5"], "dependsOn": ["edge"],
             "resources": {"cpu": 1, "memory": "32Mi"}, "constraints": {"sites": [hpc]}},
            {"name": "twin", "command": ["true"], "work": 200, "dependsOn": ["edge"],
             "resources": {"cpu": 1, "memory": "32Mi"}, "constraints": {"sites": [twin]}},
            {"name": "report", "command": ["sh", "-c", "sleep 0.2"],
             "dependsOn": ["hpc", "twin"], **device},
        ]},
    }


TASKS_PER_WORKFLOW = 4


def register_sites(api: Api, broker_url: str, slurm: SlurmCluster) -> None:
    """Sites ``fleet`` (devices on ``broker_url``), ``hpc`` (the real Slurm) and ``twin``
    (a simulated cloud at 1000× virtual time)."""
    for body in (
        {"name": "fleet", "kind": "devices", "tier": "device", "config": {"broker": broker_url}},
        {"name": "hpc", "kind": "slurm", "tier": "hpc", "config": slurm.config()},
        {"name": "twin", "kind": "sim", "tier": "cloud", "config": {
            "timeScale": 1000, "nodes": [{
                "name": "vm", "count": 2, "cpu": 8, "memory": "32Gi",
                "power": {"idleWatts": 50, "maxWatts": 200, "source": "test figure"}}]}},
    ):
        api.post("/v1/sites", body)


# ---------------------------------------------------------------- what the backends say


@dataclass(frozen=True)
class Execution:
    """One execution of a run on a backend, as the backend recorded it."""

    run_id: str
    backend: str
    """``device <id>``, ``slurm job <id>`` or ``sim <site>``."""
    state: str | None
    """The backend's final state (``Succeeded``/``Failed``/``Cancelled``), None while
    it runs."""


_STARTED = re.compile(r" run (\S+): started pid \d+")
_FINAL = re.compile(r" run (\S+): (Succeeded|Failed|Cancelled)\b")


def device_executions(agent: AgentProcess) -> list[Execution]:
    """What an agent executed: one per ``run <id>: started pid`` line of its log (each
    is a process it started; the run directory ``runs/<id>/output.log`` holds its
    output), with the last final state the agent reported for that run."""
    text = agent.logs()
    final = {m.group(1): m.group(2) for m in _FINAL.finditer(text)}
    out = []
    for m in _STARTED.finditer(text):
        rid = m.group(1)
        assert (agent.state_dir / "runs" / rid / "output.log").exists(), (
            f"agent {agent.device_id} logged run {rid} as started but has no run directory")
        out.append(Execution(rid, f"device {agent.device_id}", final.get(rid)))
    return out


@dataclass
class SlurmRecord:
    """Every Continuum job seen in slurmctld's job table (slurmrestd), by job id, with
    the latest state seen. Call :meth:`poll` during the workload: slurmctld forgets a
    finished job after MinJobAge (600 s here), less than a slow run of a chaos test."""

    slurm: SlurmCluster
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)

    def poll(self) -> SlurmRecord:
        for j in self.slurm.jobs():
            if str(j.get("name") or "").startswith("continuum-") and "job_id" in j:
                self.jobs[int(j["job_id"])] = j
        return self

    def executions(self) -> list[Execution]:
        """One per job; the run id is the job name's suffix."""
        out = []
        for jid, j in sorted(self.jobs.items()):
            st = JOB_STATE_TABLE.get(str(j.get("job_state") or ""))
            out.append(Execution(str(j["name"]).removeprefix("continuum-"), f"slurm job {jid}",
                                 st.value if st is not None and st.terminal else None))
        return out


def sim_executions(state_dirs: Iterable[Path], site: str) -> list[Execution]:
    """Every run the twin of ``site`` started, from its record in each state directory."""
    now = time.time()
    out = []
    for d in dict.fromkeys(state_dirs):
        for h in read_record(d, site):
            st = record_state(h, now)
            out.append(Execution(h.run_id, f"sim {site}", st.value if st.terminal else None))
    return out


@dataclass
class Backends:
    """What every backend of the workload recorded."""

    executions: list[Execution]

    @classmethod
    def read(cls, agents: Iterable[AgentProcess], slurm: SlurmRecord,
             replicas: Replicas, twin: str = "twin") -> Backends:
        ex: list[Execution] = []
        for a in agents:
            ex += device_executions(a)
        ex += slurm.poll().executions()
        ex += sim_executions([r.state_dir for r in replicas.replicas], twin)
        return cls(ex)

    def of(self, run_id: str) -> list[Execution]:
        return [e for e in self.executions if e.run_id == run_id]


def problems(workflows: dict[str, dict[str, Any]], backends: Backends) -> list[str]:
    """Every way the API and the backends disagree, as sentences (empty: none):

    * a workflow not Succeeded;
    * a run executed more than once (its run id twice on the backends);
    * a task executed other than exactly once, over all its runs;
    * a run whose API state differs from its backend's final state — or that Succeeded
      in the API with no execution on any backend.
    """
    out: list[str] = []
    by_run: dict[str, list[Execution]] = defaultdict(list)
    for e in backends.executions:
        by_run[e.run_id].append(e)
    for wid, wf in workflows.items():
        if wf["state"] != "Succeeded":
            out.append(f"workflow {wid} ({wf['name'] if 'name' in wf else ''}) ended "
                       f"{wf['state']}: {wf.get('reason', '')}")
        runs_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in wf["runs"]:
            runs_of[r["task"]].append(r)
        for task, runs in runs_of.items():
            executed = [(r, e) for r in runs for e in by_run.get(r["id"], [])]
            if len(executed) != 1:
                out.append(f"workflow {wid} task {task} executed {len(executed)} times: "
                           + "; ".join(f"run {r['id']} (attempt {r['attempt']}, API "
                                       f"{r['state']}) on {e.backend} ended {e.state}"
                                       for r, e in executed)
                           + f" [API runs: {[(r['id'], r['state'], r.get('reason')) for r in runs]}]")
            for r in runs:
                ex = by_run.get(r["id"], [])
                if len(ex) > 1:
                    out.append(f"run {r['id']} ({wid}/{task}) executed {len(ex)} times: "
                               f"{[(e.backend, e.state) for e in ex]}")
                if not ex:
                    if r["state"] == "Succeeded":
                        out.append(f"run {r['id']} ({wid}/{task}) Succeeded in the API but "
                                   "never executed on any backend")
                    continue
                if ex[-1].state != r["state"]:
                    out.append(f"run {r['id']} ({wid}/{task}): API says {r['state']} "
                               f"({r.get('reason')}), {ex[-1].backend} says {ex[-1].state}")
    return out


def summary(workflows: dict[str, dict[str, Any]], backends: Backends) -> dict[str, Any]:
    """Counts for the test's printout: workflows by state, runs and executions by backend."""
    runs = [r for wf in workflows.values() for r in wf["runs"]]
    return {
        "workflows": dict(Counter(wf["state"] for wf in workflows.values())),
        "tasks": sum(len({r["task"] for r in wf["runs"]}) for wf in workflows.values()),
        "runs": len(runs),
        "retriedTasks": sum(1 for r in runs if r["attempt"] > 1),
        "executions": dict(Counter(e.backend.split(" ")[0] for e in backends.executions
                                   if e.run_id in {r["id"] for r in runs})),
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"\n{json.dumps(report, sort_keys=True)}\n(written to {path})")


__all__ = ["Api", "Backends", "Execution", "Replica", "Replicas", "SlurmRecord", "chaos_workflow",
           "problems", "register_sites", "summary", "write_report"]
