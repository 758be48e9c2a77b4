"""Site removal goes through the reconciler (the only code that cancels runs on a
backend): ``DELETE /v1/sites/{name}`` cancels the site's running work, forgets the site,
and its runs end Failed and are retried elsewhere; an unknown site is a 404."""

from __future__ import annotations

from pathlib import Path

from tests.control_plane.harness import control_plane, wait_state, workflow
from tests.helpers import wait_for

OTHER = {"name": "other", "kind": "sim", "tier": "cloud", "location": "dc",
         "config": {"timeScale": 1_000_000, "nodes": [
             {"name": "vm", "count": 1, "cpu": 8, "memory": "32Gi", "speed": 1.0,
              "power": {"idleWatts": 50, "maxWatts": 200, "source": "test figure"}}]}}


def test_removing_a_site_cancels_its_work_and_the_task_is_retried_elsewhere(
        tmp_path: Path) -> None:
    # time scale 1: work 10^6 core-s runs for days on "cloud" unless cancelled
    with control_plane(tmp_path, time_scale=1.0) as (_, api):
        wid = api.post("/v1/workflows", json=workflow(tasks=[
            {"name": "long", "command": ["true"], "work": 1_000_000, "retries": 1}])).json()["id"]

        def running() -> dict | None:
            runs = api.get("/v1/runs", params={"workflow": wid}).json()["items"]
            return next((r for r in runs if r["state"] == "Running"), None)

        first = wait_for(running, 20, message="the run running on cloud")
        assert first["site"] == "cloud"
        assert api.post("/v1/sites", json=OTHER).status_code == 201

        r = api.delete("/v1/sites/cloud")
        assert r.status_code == 200, r.text
        assert r.json() == {"site": "cloud", "runs": "cancel", "cancelled": [first["id"]],
                            "left": []}
        assert api.get("/v1/sites/cloud").status_code == 404
        assert api.delete("/v1/sites/cloud").status_code == 404

        wf = wait_state(api, wid, ("Succeeded", "Failed"), timeout=30)
        assert wf["state"] == "Succeeded", wf["reason"]
        old = next(r for r in wf["runs"] if r["id"] == first["id"])
        assert old["state"] == "Failed" and old["reason"] == "site 'cloud' was removed"
        assert [r["site"] for r in wf["runs"] if r["id"] != first["id"]] == ["other"]
        removed = [e for e in wf["events"] if e["type"] == "SiteRemoved"]
        assert [e["message"] for e in removed] == [
            "site cloud was removed; its backend work was cancelled"]


def test_removing_a_site_with_runs_leave_leaves_its_work_untracked(tmp_path: Path) -> None:
    with control_plane(tmp_path, time_scale=1.0) as (_, api):
        wid = api.post("/v1/workflows", json=workflow(tasks=[
            {"name": "long", "command": ["true"], "work": 1_000_000, "retries": 0}])).json()["id"]

        def running() -> dict | None:
            runs = api.get("/v1/runs", params={"workflow": wid}).json()["items"]
            return next((r for r in runs if r["state"] == "Running"), None)

        first = wait_for(running, 20, message="the run running on cloud")
        r = api.delete("/v1/sites/cloud", params={"runs": "leave"})
        assert r.status_code == 200, r.text
        assert r.json() == {"site": "cloud", "runs": "leave", "cancelled": [],
                            "left": [first["id"]]}
        wf = wait_state(api, wid, ("Failed",), timeout=30)  # retries: 0, nowhere else to go
        (run,) = wf["runs"]
        assert run["state"] == "Failed" and run["reason"] == "site 'cloud' was removed"
        assert [e["message"] for e in wf["events"] if e["type"] == "SiteRemoved"] == [
            "site cloud was removed; its backend work was left running, untracked"]
        assert api.delete("/v1/sites/cloud", params={"runs": "sometimes"}).status_code == 422
