"""One workflow across a device fleet and a Slurm cluster, end to end through the REST API.

Aspects: a device task (a real ``continuum-agent`` over the real Mosquitto) produces an
artifact; a Slurm job fetches it over HTTP in its prologue (sha256-checked), transforms
it and uploads its output in its epilogue; a second device task consumes that output.
Every byte passes through the control plane's artifact API; placement puts each task on
the tier its constraints name.
"""

from __future__ import annotations

import sys

import pytest

from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster
from tests.conftest import AgentFactory, Mosquitto
from tests.helpers import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.mosquitto]

PAYLOAD = "sensor reading 42\n" * 50


def test_device_to_slurm_to_device_with_artifacts(slurm: SlurmCluster, mosquitto: Mosquitto,
                                                   agents: AgentFactory,
                                                   live_cp: LiveFactory) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    r = lcp.http.post("/v1/sites", json={"name": "fleet", "kind": "devices", "tier": "device",
                                         "config": {"broker": mosquitto.url}})
    assert r.status_code == 201, r.text
    agents.trust(lcp.settings.state_dir)
    agents.spawn("pi-1")
    wait_for(lambda: any(n["ready"] for n in lcp.get("/v1/nodes", params={"site": "fleet"})["items"]),
             timeout=20, message="the agent to join the fleet")
    produce = f"open('data.txt', 'w').write({PAYLOAD!r})"
    check = ("import sys; got = open('upper.txt').read(); "
             f"sys.exit(0 if got == {PAYLOAD.upper()!r} else 7)")
    wid = lcp.submit([
        {"name": "produce", "command": [sys.executable, "-c", produce], "retries": 0,
         "resources": {"cpu": "100m", "memory": "32Mi"}, "constraints": {"tiers": ["device"]},
         "outputs": [{"name": "data", "path": "data.txt"}]},
        {"name": "crunch", "retries": 0, "constraints": {"sites": ["hpc"]},
         "command": ["bash", "-c", "tr a-z A-Z < in/data.txt > upper.txt && wc -c < in/data.txt"],
         "resources": {"cpu": 1, "memory": "64Mi"},
         "inputs": [{"name": "data", "path": "in/data.txt"}],
         "outputs": [{"name": "upper", "path": "upper.txt"}]},
        {"name": "consume", "command": [sys.executable, "-c", check], "retries": 0,
         "resources": {"cpu": "100m", "memory": "32Mi"}, "constraints": {"tiers": ["device"]},
         "inputs": [{"name": "upper", "path": "upper.txt"}]},
    ], name="mixed")
    wf = lcp.wait_workflow(wid, timeout=90)
    assert wf["state"] == "Succeeded", wf
    runs = {r["task"]: r for r in wf["runs"]}
    assert runs["produce"]["node"] == "fleet/pi-1"
    assert runs["consume"]["node"] == "fleet/pi-1"
    crunch = runs["crunch"]
    assert crunch["site"] == "hpc" and crunch["handle"]["backendId"].isdigit()
    assert crunch["observed"]["bytesIn"] == len(PAYLOAD)
    assert crunch["observed"]["bytesOut"] == len(PAYLOAD)
    assert str(len(PAYLOAD)) in lcp.get(f"/v1/runs/{crunch['id']}")["outputTail"]
    art = lcp.http.get(f"/v1/artifacts/{wid}/upper")
    assert art.status_code == 200 and art.text == PAYLOAD.upper()
    job = slurm.jobs_named(f"continuum-{crunch['id']}")
    assert len(job) == 1 and job[0]["job_state"] == "COMPLETED"
