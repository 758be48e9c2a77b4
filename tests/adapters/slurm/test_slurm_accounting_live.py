"""Accounting read-back against a real Slurm with slurmdbd on MariaDB (fixture
``slurm_accounting``: ``deploy/dev/slurm.sh start DIR --release 24.11 --accounting``).

A finished job's slurmdbd record (state, exit code, elapsed, CPU time, max RSS; energy
where an AcctGatherEnergy plugin measures it — the test bed has none, so it stays
unknown) reaches the run record, the API's run view and the learned predictors' samples.
"""

from __future__ import annotations

import pytest

from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster

pytestmark = pytest.mark.slurm

BURN = ("x=$(head -c 30000000 /dev/zero | tr '\\0' a); i=0; "
        "while [ $i -lt 600000 ]; do i=$((i+1)); done; sleep 2; echo ${#x}")
"""About 1-2 s of CPU holding ~30 MB (a shell variable), then 2 s more: long enough for
jobacct_gather to sample its RSS."""


def task(name: str, script: str, **kw: object) -> dict[str, object]:
    return {"name": name, "command": ["bash", "-c", script], "retries": 0,
            "resources": {"cpu": 1, "memory": "256Mi"}, "constraints": {"sites": ["hpc"]}, **kw}


def test_finished_jobs_carry_their_slurmdbd_accounting(slurm_accounting: SlurmCluster,
                                                       live_cp: LiveFactory) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm_accounting.config()).status_code == 201
    wid = lcp.submit([task("burn", BURN), task("bad", "exit 3", dependsOn=["burn"])])
    wf = lcp.wait_workflow(wid, timeout=120)
    assert wf["state"] == "Failed", wf
    burn = lcp.get(f"/v1/runs/{lcp.runs(wid, 'burn')[0]['id']}")
    obs = burn["observed"]
    acct = obs["accounting"]
    assert acct is not None, burn
    assert acct["source"] == "slurmdbd"
    assert acct["jobId"] == int(burn["handle"]["backendId"])
    assert (acct["state"], acct["exitCode"]) == ("COMPLETED", 0)
    assert acct["elapsedS"] >= 2 and obs["runtimeS"] == acct["elapsedS"]
    assert obs["cpuTimeS"] == acct["cpuTimeS"] > 0.3
    assert obs["maxRssBytes"] == acct["maxRssBytes"] > 20_000_000
    assert obs["energyJ"] is None and acct["energyJ"] is None  # no energy plugin here
    bad = lcp.get(f"/v1/runs/{lcp.runs(wid, 'bad')[0]['id']}")
    assert bad["exitCode"] == 3
    assert (bad["observed"]["accounting"]["state"],
            bad["observed"]["accounting"]["exitCode"]) == ("FAILED", 3)
    # the learned predictors train on the accounted runtime of the succeeded run
    samples = lcp.cp.models.store_samples()
    assert [s.runtime_s for s in samples if s.slurm] == [acct["elapsedS"]]


def test_slurm_refuses_an_account_or_qos_not_the_users_and_the_run_names_the_setting(
        slurm_accounting: SlurmCluster, live_cp: LiveFactory) -> None:
    """slurmdbd enforces associations and QoS (``AccountingStorageEnforce``): an account
    and a QoS that exist — so registration accepts them — but are not the job user's are
    refused by slurmctld at submit; the run fails once, its reason naming the setting."""
    for args in (["add", "account", "elsewhere", "Description=x", "Organization=x"],
                 ["add", "qos", "premium"]):
        r = slurm_accounting.run("sacctmgr", "-i", *args)
        assert r.returncode == 0 or "already exists" in r.stdout + r.stderr, r
    lcp = live_cp()
    cfg = slurm_accounting.config()
    for name, setting in (("acct", {"account": "elsewhere"}), ("qos", {"qos": "premium"})):
        r = lcp.register(name, {**cfg, **setting})
        assert r.status_code == 201, r.text
        wid = lcp.submit([{**task("t", "true"), "constraints": {"sites": [name]}}])
        wf = lcp.wait_workflow(wid, timeout=60)
        assert wf["state"] == "Failed", wf
        runs = lcp.runs(wid, "t")
        assert len(runs) == 1, runs
        key, value = next(iter(setting.items()))
        label = "QoS" if key == "qos" else key
        assert f"Slurm refused {label} '{value}' (config.{key})" in runs[0]["reason"], runs
        assert slurm_accounting.jobs_named(f"continuum-{runs[0]['id']}") == []
