"""Chaos tests (issue 15): the control plane killed, the broker and the database
restarted during a workload on real backends, judged from the backends' side.

Loopback only, seeded (``CHAOS_SEED``, default 15), bounded (pytest-timeout on each).
The workload is ``chaos-<i>`` workflows of four short tasks (tests/chaos/harness.py:
a device of two real ``continuum-agent``s on the real Mosquitto, the real Slurm 22.05
and a simulated site). Each test asserts, from what the backends recorded (the agents'
logs and run directories, slurmctld's job table by run id, the twin's record): every
accepted workflow Succeeded, every task executed exactly once, and every run's final
state in the API is its backend's. Select them with ``pytest -m chaos``; ``-s`` shows
the figures, which are also written to ``chaos-*.json`` in the test's tmp directory.

The control plane is two ``continuum server`` replicas on a new database of the
session's PostgreSQL 15 (``postgres`` fixture): killing the leader makes the follower
take over, and the takeover time is from the SIGKILL until the follower answers as the
leader with a completed reconcile cycle (``/leaderz``, ``/readyz``). The kill test also
runs with one replica on SQLite, where a kill is a crash and a restart (crash recovery).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapters.slurm.conftest import SlurmCluster
from tests.chaos.harness import (
    TASKS_PER_WORKFLOW,
    Api,
    Backends,
    Replicas,
    SlurmRecord,
    chaos_workflow,
    problems,
    register_sites,
    summary,
    write_report,
)
from tests.conftest import AgentFactory, AgentProcess, Mosquitto, SlurmBeds
from tests.helpers import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.mosquitto, pytest.mark.slurm]

SEED = int(os.environ.get("CHAOS_SEED", "15"))
ACTIVE = ("Placed", "Dispatched", "Running")
SLURM_RELEASE = "22.05"
"""One release is enough here: the Slurm adapter's own tests cover the others."""


def chaos_pause(seconds: float) -> None:
    """Let the workload run for ``seconds`` before the next fault: the seeded random
    point of the fault itself, not a wait for a condition."""
    time.sleep(seconds)


def active_runs(api: Api) -> Counter[str]:
    """Runs Placed, Dispatched or Running by state, as the API shows them now (what a
    fault about to be injected interrupts)."""
    return Counter(r["state"] for r in api.get("/v1/runs", limit=1000)["items"]
                   if r["state"] in ACTIVE)


def interrupted(what: str, seen: list[Counter[str]]) -> dict[str, object]:
    """For the report: how many faults found runs in each active state, and how many
    runs were active at the faults in all."""
    return {f"{what}WithRunsIn": {s: sum(1 for c in seen if c[s]) for s in ACTIVE},
            f"activeRunsAt{what.title()}": sum(sum(c.values()) for c in seen)}


@pytest.fixture
def hpc(slurm_beds: SlurmBeds) -> SlurmCluster:
    return slurm_beds.get(SLURM_RELEASE)


@pytest.fixture
def jobs(hpc: SlurmCluster) -> SlurmRecord:
    """Slurm's job table as seen during the test (polled at each fault and at the end)."""
    return SlurmRecord(hpc)


@pytest.fixture
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    """The control plane: ``postgresql-2`` (default; two replicas on a new database of the
    session's PostgreSQL 15) or ``sqlite-1`` (one replica on SQLite: a kill is a crash
    and a restart)."""
    setup = getattr(request, "param", "postgresql-2")
    if setup == "sqlite-1":
        reps = Replicas(tmp_path)
    else:
        pg = request.getfixturevalue("postgres")
        reps = Replicas(tmp_path, n=2, database_url=pg.new_database(), postgres=pg)
    yield reps
    reps.stop()


def continuum(replicas: Replicas, agents: AgentFactory, mosquitto: Mosquitto,
              hpc: SlurmCluster) -> list[AgentProcess]:
    """Start the replicas, register the three sites and start two agents (both in the
    fleet before the workload starts); returns the agents."""
    replicas.start()
    api = replicas.api()
    register_sites(api, mosquitto.url, hpc)
    agents.trust(replicas.state_dir)
    spawned = [agents.spawn(f"chaos-pi-{i}") for i in range(2)]
    wait_for(lambda: sum(n["ready"] for n in api.get("/v1/nodes", site="fleet")["items"]) == 2,
             timeout=30, message="both agents in the fleet")
    return spawned


def judge(name: str, tmp_path: Path, replicas: Replicas, agents: list[AgentProcess],
          jobs: SlurmRecord, wids: list[str], started: float, extra: dict[str, object],
          timeout: float = 150) -> None:
    """Wait for every workflow to end, read the backends, write and print the report,
    and assert nothing was lost or run twice."""
    workflows = replicas.api().wait_all(wids, timeout=timeout)
    backends = Backends.read(agents, jobs, replicas)
    found = problems(workflows, backends)
    report = {"test": name, "seed": SEED, "wall_s": round(time.monotonic() - started, 1),
              **summary(workflows, backends), **replicas.takeover_summary(), **extra,
              "problems": found}
    write_report(tmp_path / f"chaos-{name}.json", report)
    assert found == [], "\n".join(found)
    assert len(workflows) == len(wids)


@pytest.mark.timeout(900)  # 4.5 min alone on 2 CPUs; 9 min with other suites running
@pytest.mark.parametrize(("replicas", "kills"), [("postgresql-2", 50), ("sqlite-1", 20)],
                         indirect=["replicas"])
def test_kill_the_leader_at_random_points(
        replicas: Replicas, kills: int, agents: AgentFactory, mosquitto: Mosquitto,
        hpc: SlurmCluster, jobs: SlurmRecord, tmp_path: Path) -> None:
    """``kills`` workflows (4 tasks each: 200 with 50 kills), one submitted before each
    SIGKILL of the leader, which lands 0–1.5 s (seeded) after the previous takeover:
    during placement, dispatch, running tasks, finished runs not yet recorded."""
    started = time.monotonic()
    spawned = continuum(replicas, agents, mosquitto, hpc)
    api = replicas.api()
    rng = random.Random(SEED)
    wids = []
    at_kill: list[Counter[str]] = []
    for i in range(kills):
        wids.append(api.submit(chaos_workflow(i)))
        chaos_pause(rng.uniform(0.0, 1.5))
        at_kill.append(active_runs(api))
        jobs.poll()
        replicas.kill_leader()
    assert len(wids) * TASKS_PER_WORKFLOW == 4 * kills
    judge(f"kill-leader-{replicas.n}", tmp_path, replicas, spawned, jobs, wids, started, {
        **interrupted("kills", at_kill),
        # runs a new leader submitted again under their run id and Slurm's adapter found
        # already there (then judged: each ran once)
        "slurmResubmitsFound": sum(r.logs().count("not submitting again")
                                   for r in replicas.replicas)})


@pytest.mark.timeout(300)
def test_20_mosquitto_restarts_during_a_workload(
        replicas: Replicas, agents: AgentFactory, mosquitto: Mosquitto, hpc: SlurmCluster,
        jobs: SlurmRecord, tmp_path: Path) -> None:
    """20 workflows (80 tasks), one submitted before each broker restart, which lands
    0–1.5 s (seeded) later; the broker keeps nothing across a restart (persistence off)."""
    started = time.monotonic()
    spawned = continuum(replicas, agents, mosquitto, hpc)
    api = replicas.api()
    rng = random.Random(SEED)
    wids = []
    down: list[float] = []
    at_restart: list[Counter[str]] = []
    for i in range(20):
        wids.append(api.submit(chaos_workflow(i)))
        chaos_pause(rng.uniform(0.0, 1.5))
        at_restart.append(active_runs(api))
        jobs.poll()
        t0 = time.monotonic()
        mosquitto.restart()
        down.append(time.monotonic() - t0)
    judge("mosquitto-restarts", tmp_path, replicas, spawned, jobs, wids, started,
          {"mosquittoRestarts": len(down), "brokerDown_s": {"max": round(max(down), 3)},
           **interrupted("restarts", at_restart)})


@pytest.mark.timeout(240)
def test_database_restart_during_a_workload(
        replicas: Replicas, agents: AgentFactory, mosquitto: Mosquitto, hpc: SlurmCluster,
        jobs: SlurmRecord, tmp_path: Path) -> None:
    """10 workflows (40 tasks) on PostgreSQL; the database server is restarted (fast
    shutdown: every connection cut) 0.5–1.5 s (seeded) after the first five were
    submitted, while they run; the other five are submitted once it is back."""
    started = time.monotonic()
    spawned = continuum(replicas, agents, mosquitto, hpc)
    api = replicas.api()
    rng = random.Random(SEED)
    wids = [api.submit(chaos_workflow(i)) for i in range(5)]
    chaos_pause(rng.uniform(0.5, 1.5))
    at_restart = [active_runs(api)]
    down = replicas.restart_database()
    wids += [api.submit(chaos_workflow(i)) for i in range(5, 10)]
    judge("database-restart", tmp_path, replicas, spawned, jobs, wids, started,
          {"databaseRestarts": 1, "databaseDown_s": round(down, 3),
           **interrupted("restarts", at_restart),
           # the restart was felt: cycles failed on the cut connections and the loop went on
           "failedCycles": sum(r.logs().count("reconcile cycle failed")
                               for r in replicas.replicas)})
