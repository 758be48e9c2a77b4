"""Retries move to another node; Pending workflows say why.

Aspects: a task whose first run failed on one node is retried on the other node of the
site; with one feasible node it is retried there; a task limited to a draining site is
unschedulable with a reason naming the drain, and the workflow's own reason (list and
detail) shows it.
"""

from __future__ import annotations

from pathlib import Path

from tests.control_plane.harness import control_plane, wait_state, workflow
from tests.helpers import wait_for

SOLO = {"name": "solo", "kind": "sim", "tier": "cloud", "location": "dc",
        "config": {"timeScale": 1000, "failureRate": 1.0, "nodes": [
            {"name": "only", "count": 1, "cpu": 8, "memory": "32Gi",
             "power": {"idleWatts": 50, "maxWatts": 200, "source": "test figure"}}]}}


def test_a_retry_prefers_another_node(tmp_path: Path, database_url: str) -> None:
    with control_plane(tmp_path, database_url=database_url, failure_rate=1.0) as (_, api):
        doc = workflow(tasks=[{"name": "flaky", "command": ["true"], "work": 10, "retries": 1}])
        wid = api.post("/v1/workflows", json=doc).json()["id"]
        wf = wait_state(api, wid, ("Failed",))
        first, second = sorted(wf["runs"], key=lambda r: r["attempt"])
        assert first["node"] != second["node"], wf["runs"]
        assert "retry avoids " + first["node"] in second["placement"]["reasons"][-1]

        assert api.post("/v1/sites", json=SOLO).status_code == 201
        doc = workflow("solo", tasks=[{"name": "flaky", "command": ["true"], "work": 10,
                                       "retries": 1, "constraints": {"sites": ["solo"]}}])
        wid = api.post("/v1/workflows", json=doc).json()["id"]
        wf = wait_state(api, wid, ("Failed",))
        first, second = sorted(wf["runs"], key=lambda r: r["attempt"])
        assert first["node"] == second["node"] and first["site"] == "solo", wf["runs"]
        assert any("no other feasible node" in r for r in second["placement"]["reasons"])


def test_a_task_on_a_draining_site_says_so(tmp_path: Path, database_url: str) -> None:
    with control_plane(tmp_path, database_url=database_url) as (_, api):
        assert api.post("/v1/sites/cloud/drain").status_code == 200
        doc = workflow(tasks=[{"name": "pinned", "command": ["true"],
                               "constraints": {"sites": ["cloud"]}}])
        wid = api.post("/v1/workflows", json=doc).json()["id"]

        def listed() -> str | None:
            items = api.get("/v1/workflows").json()["items"]
            reason = next(w["reason"] for w in items if w["id"] == wid)
            return reason or None

        reason = wait_for(listed, timeout=10, message="a reason on the Pending workflow")
        assert reason.startswith("task pinned: unschedulable: no node fits"), reason
        assert "site cloud is draining" in reason and "site not allowed" not in reason
        wf = api.get(f"/v1/workflows/{wid}").json()
        assert wf["state"] == "Pending" and wf["reason"] == reason
        api.post("/v1/sites/cloud/resume")
        wf = wait_state(api, wid, ("Succeeded",))
        assert wf["reason"] == ""
