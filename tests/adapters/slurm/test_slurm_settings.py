"""What an hpc-admin sets per site and per tenant, against the real Slurm of the
``slurm`` fixture: registration refuses settings the cluster cannot honour (naming the
field), jobs carry them, and a submit Slurm refuses is a permanent error on the run that
names the setting. Also the job-table read on slurmctld's clock (issue 13, item 5).

Account and QoS refusals need slurmdbd (accounting); the fixture's cluster has none, so
Slurm takes any account or QoS there (tests/adapters/slurm/data shows it)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterContext, Handle, TaskRun
from adapters.slurm import SlurmAdapter
from continuum.errors import PermanentError
from continuum.model import RunState, SiteSpec, Task
from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster
from tests.helpers import wait_for


def _adapter(slurm: SlurmCluster, tmp_path: Path, clock: Any = time.time,
             **config: Any) -> SlurmAdapter:
    site = SiteSpec.model_validate({"name": "hpc", "kind": "slurm",
                                    "config": slurm.config(**config)})
    ctx = AdapterContext(artifacts=None, state_dir=tmp_path, clock=clock)  # type: ignore[arg-type]
    return SlurmAdapter(site, ctx)


def _run(name: str, command: list[str], tenant: str = "default",
         timeout: float | None = None) -> TaskRun:
    task = Task.model_validate({"name": name, "command": command, "timeout": timeout,
                                "resources": {"cpu": "100m", "memory": "16Mi"}})
    return TaskRun(run_id=f"run-{uuid.uuid4().hex[:12]}", workflow_id="wf-x",
                   workflow_name="x", task=task, tenant=tenant)


def test_registration_reports_the_release_and_data_parser(slurm: SlurmCluster,
                                                          live_cp: LiveFactory) -> None:
    lcp = live_cp()
    r = lcp.register("hpc", slurm.config())
    assert r.status_code == 201, r.text
    backend = r.json()["backend"]
    assert backend["slurmRelease"].count(".") == 2  # e.g. 22.05.8, 24.11.5
    kind, _, version = backend["dataParser"].partition("/")
    assert (kind, backend["family"]) in (("openapi", "v0.0.36-38"),
                                         ("data_parser", "data_parser"))
    assert version.startswith("v0.0.")
    assert lcp.get("/v1/sites/hpc")["backend"] == backend


@pytest.mark.parametrize(("config", "field", "words"), [
    ({"reservation": "nosuchresv"}, "reservation", "reservation 'nosuchresv' does not exist"),
    ({"userMap": [{"tenant": "*", "user": "slurm", "reservation": "gone"}]},
     "userMap.0.reservation", "reservation 'gone' does not exist"),
    ({"constraint": "nosuchfeature"}, "constraint", "feature(s) nosuchfeature"),
    ({"userMap": [{"tenant": "lab", "user": "slurm", "partitions": ["gpu"]}]},
     "userMap.0.partitions", "gpu not among the site's partitions"),
    ({"qos": "has space"}, "qos", "should match pattern"),
    ({"defaultTimeLimit": 0}, "defaultTimeLimit", "greater than 0"),
])
def test_registration_refuses_settings_naming_the_field(
        config: dict[str, Any], field: str, words: str, slurm: SlurmCluster,
        live_cp: LiveFactory) -> None:
    if "userMap" in config:
        config["userMap"][0]["user"] = slurm.user
    r = live_cp().register("hpc", slurm.config(**config))
    assert r.status_code == 422, r.text
    problem = r.json()["detail"][0]
    assert [str(x) for x in problem["loc"]] == ["config", *field.split(".")], problem
    assert words in problem["msg"], problem


def test_jobs_carry_the_settings_with_tenant_overrides(slurm: SlurmCluster,
                                                       tmp_path: Path) -> None:
    """Site: default time limit 5 min; tenant lab: 2 min and partition short only."""
    a = _adapter(slurm, tmp_path, partitions=["debug", "short"], defaultTimeLimit=300,
                 userMap=[{"tenant": "lab", "user": slurm.user, "partitions": ["short"],
                           "defaultTimeLimit": 120},
                          {"tenant": "*", "user": slurm.user}])
    nodes = {n.name: n for n in a.inventory()}
    other = a.submit(r1 := _run("other", ["true"]), nodes["debug"], r1.run_id)
    lab = a.submit(r2 := _run("lab", ["true"], tenant="lab"), nodes["short"], r2.run_id)
    with pytest.raises(PermanentError) as e:
        a.submit(r3 := _run("lab2", ["true"], tenant="lab"), nodes["debug"], r3.run_id)
    assert "config.userMap.0.partitions" in e.value.message
    assert e.value.details["field"] == "userMap.0.partitions"
    jobs = {str(j["job_id"]): j for j in slurm.jobs()}
    assert jobs[other.backend_id]["time_limit"] == 5
    assert jobs[lab.backend_id]["time_limit"] == 2
    assert jobs[lab.backend_id]["partition"] == "short"
    a.close()


@pytest.mark.parametrize(("config", "node_name", "words"), [
    ({"reservation": "nosuchresv"}, None,
     "Slurm refused reservation 'nosuchresv' (config.reservation)"),
    ({"userMap": [{"tenant": "*", "user": "SLURMUSER", "constraint": "nosuchfeature"}]}, None,
     "Slurm refused constraint 'nosuchfeature' (config.userMap.0.constraint)"),
    ({"partitions": []}, "vanished",
     "Slurm refused partition 'vanished' (config.partitions)"),
])
def test_a_submit_slurm_refuses_is_permanent_and_names_the_setting(
        config: dict[str, Any], node_name: str | None, words: str, slurm: SlurmCluster,
        tmp_path: Path) -> None:
    """Settings that passed registration and then stopped being valid (a reservation
    deleted, a feature removed, a partition gone): the run fails at once, no retry."""
    for m in config.get("userMap", []):
        m["user"] = slurm.user
    a = _adapter(slurm, tmp_path, **config)  # no check(): as if valid at registration
    node = a.inventory()[0]
    if node_name:
        node = node.model_copy(update={"name": node_name})
    run = _run("refused", ["true"])
    with pytest.raises(PermanentError) as e:
        a.submit(run, node, run.run_id)
    assert words in e.value.message, e.value.message
    assert slurm.jobs_named(f"continuum-{run.run_id}") == []
    a.close()


def test_a_refused_submit_fails_the_run_once_through_the_control_plane(
        slurm: SlurmCluster, live_cp: LiveFactory) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    adapter = lcp.cp.federation.get_adapter("hpc")
    adapter.config.constraint = "nosuchfeature"  # type: ignore[union-attr]  # removed since
    wid = lcp.submit([{"name": "c", "command": ["true"], "retries": 0,
                       "constraints": {"sites": ["hpc"]}}])
    # a transient error would be retried for dispatchDeadline (60 s) before failing
    wf = lcp.wait_workflow(wid, timeout=20)
    assert wf["state"] == "Failed"
    runs = lcp.runs(wid, "c")
    assert len(runs) == 1, runs
    assert "Slurm refused constraint 'nosuchfeature' (config.constraint)" in runs[-1]["reason"]
    assert "Invalid feature specification" in runs[-1]["reason"]


def test_the_job_table_is_read_on_slurmctlds_clock_not_ours(slurm: SlurmCluster,
                                                            tmp_path: Path) -> None:
    """A control plane whose clock runs an hour ahead of slurmctld's: an update_time
    taken from our clock would make slurmctld answer "unchanged" for an hour."""
    a = _adapter(slurm, tmp_path, clock=lambda: time.time() + 3600, pollInterval=0)
    gate = slurm.gate()
    node = a.inventory()[0]
    run = _run("skewed", ["bash", "-c", f"while [ ! -e {gate} ]; do sleep 0.1; done"])
    h = a.submit(run, node, run.run_id)
    h = Handle(site=h.site, run_id=h.run_id, backend_id=h.backend_id, node=h.node,
               data={**h.data, "submittedAt": 0})
    wait_for(lambda: (st := a.status([h]).get(run.run_id)) and st.state == RunState.Running,
             30, message="the job to run")
    gate.touch()
    st = wait_for(lambda: (s := a.status([h]).get(run.run_id)) and s.state.terminal and s,
                  30, message="the job's end to be seen")
    assert st.state == RunState.Succeeded
    assert a._update_time < time.time() + 5  # slurmctld's clock, not ours (+1 h)
    a.close()
