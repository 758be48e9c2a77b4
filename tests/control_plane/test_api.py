"""The REST API, route by route, and every validation error with its message.

Aspects: workflow submit (JSON and YAML), list (state filter, pagination), get,
cancel (and its 409); runs and their placement explanation; artifacts up and down;
site registration and its errors; nodes, devices, topology; health, readiness, metrics;
422s that name the field and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.control_plane.harness import (
    artifact_url,
    control_plane,
    run_of,
    wait_state,
    workflow,
)


@pytest.fixture
def api(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    with control_plane(tmp_path, database_url=database_url) as (_, client):
        yield client


def test_submit_json_runs_to_success_and_shows_everything(api) -> None:  # type: ignore[no-untyped-def]
    r = api.post("/v1/workflows", json=workflow())
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    assert r.headers["location"] == f"/v1/workflows/{wid}"
    wf = wait_state(api, wid, ("Succeeded", "Failed"))
    assert wf["state"] == "Succeeded", wf
    assert [t["state"] for t in wf["tasks"]] == ["Succeeded", "Succeeded"]
    assert {r["task"] for r in wf["runs"]} == {"a", "b"}
    types = [e["type"] for e in wf["events"]]
    assert types[0] == "WorkflowAccepted" and types[-1] == "WorkflowSucceeded"
    assert "RunPlaced" in types and "RunDispatched" in types and "RunSucceeded" in types
    # b read a's output: the artifact was kept and its bytes counted
    run_b = next(r for r in wf["runs"] if r["task"] == "b")
    assert run_b["observed"]["bytesIn"] > 0


def test_submit_yaml(api) -> None:  # type: ignore[no-untyped-def]
    r = api.post("/v1/workflows", content=yaml.safe_dump(workflow("from-yaml")),
                 headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "from-yaml"


def test_list_filters_by_state_and_paginates(api) -> None:  # type: ignore[no-untyped-def]
    ids = [api.post("/v1/workflows", json=workflow(f"w{i}")).json()["id"] for i in range(3)]
    for wid in ids:
        wait_state(api, wid, ("Succeeded",))
    page = api.get("/v1/workflows", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = api.get("/v1/workflows", params={"limit": 2, "offset": 2}).json()
    assert len(rest["items"]) == 1
    assert {w["id"] for w in page["items"] + rest["items"]} == set(ids)
    assert api.get("/v1/workflows", params={"state": "Succeeded"}).json()["total"] == 3
    assert api.get("/v1/workflows", params={"state": "Failed"}).json()["total"] == 0
    assert page["items"][0]["tasks"] == {"Succeeded": 2}
    assert api.get("/v1/workflows", params={"state": "Bogus"}).status_code == 422


def test_get_unknown_workflow_is_404(api) -> None:  # type: ignore[no-untyped-def]
    r = api.get("/v1/workflows/wf-nope")
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]


def test_cancel_stops_running_work(api) -> None:  # type: ignore[no-untyped-def]
    long = workflow("long", [{"name": "forever", "command": ["true"], "work": 10_000_000}])
    wid = api.post("/v1/workflows", json=long).json()["id"]
    wait_state(api, wid, ("Running",))
    r = api.delete(f"/v1/workflows/{wid}")
    assert r.status_code == 202
    wf = wait_state(api, wid, ("Cancelled",))
    assert wf["tasks"][0]["state"] == "Cancelled"
    assert [r["state"] for r in wf["runs"]] == ["Cancelled"]
    assert api.delete(f"/v1/workflows/{wid}").status_code == 202  # harmless again


def test_cancel_finished_workflow_is_409(api) -> None:  # type: ignore[no-untyped-def]
    wid = api.post("/v1/workflows", json=workflow()).json()["id"]
    wait_state(api, wid, ("Succeeded",))
    r = api.delete(f"/v1/workflows/{wid}")
    assert r.status_code == 409 and "already succeeded" in r.json()["detail"]


def test_run_shows_placement_explanation_and_output(api) -> None:  # type: ignore[no-untyped-def]
    wid = api.post("/v1/workflows", json=workflow()).json()["id"]
    wait_state(api, wid, ("Succeeded",))
    runs = api.get("/v1/runs", params={"workflow": wid}).json()
    assert runs["total"] == 2
    run = api.get(f"/v1/runs/{runs['items'][0]['id']}").json()
    p = run["placement"]
    assert p["node"].startswith("cloud/vm-") and p["tier"] == "cloud"
    assert set(p["scores"]) >= {"CompletionTime", "Energy"}
    assert all(0 <= v <= 100 for v in p["scores"].values())
    pred = p["predicted"]
    assert pred["runtimeS"] == pytest.approx(100.0)  # work 100 core-s on 1 core at speed 1
    assert pred["energyJ"] > 0 and p["reasons"]
    assert run["observed"]["runtimeS"] == pytest.approx(100.0, rel=0.05)
    assert "[simulated]" in run["outputTail"] and run["simulated"] is True
    assert [e["type"] for e in run["events"]][:2] == ["RunPending", "RunPlaced"]
    assert api.get("/v1/runs/run-nope").status_code == 404


def test_artifacts_round_trip(api) -> None:  # type: ignore[no-untyped-def]
    long = workflow("long", [{"name": "forever", "command": ["true"], "work": 10_000_000,
                              "outputs": [{"name": "data/readings.csv", "path": "r.csv"}]}])
    wid = api.post("/v1/workflows", json=long).json()["id"]
    wait_state(api, wid, ("Running",))
    run = run_of(api, wid, "forever")
    r = api.put(artifact_url(api, wid, run, "data/readings.csv"), content=b"t,v\n1,2\n")
    assert r.status_code == 201, r.text
    assert r.json()["size"] == 8
    got = api.get(f"/v1/artifacts/{wid}/data/readings.csv")
    assert got.content == b"t,v\n1,2\n" and got.headers["x-content-sha256"] == r.json()["sha256"]
    assert api.get(f"/v1/artifacts/{wid}/nothing").status_code == 404
    assert api.put(f"/v1/artifacts/{wid}/..%2Fescape", content=b"x").status_code in (404, 422)
    assert api.put(artifact_url(api, "wf-nope", run, "x"), content=b"x").status_code == 404


def test_sites_nodes_devices_topology(api) -> None:  # type: ignore[no-untyped-def]
    sites = api.get("/v1/sites").json()["items"]
    assert [(s["name"], s["health"], s["nodes"]) for s in sites] == [("cloud", "Ready", 2)]
    site = {"name": "hpc", "kind": "sim", "tier": "hpc", "location": "dc",
            "config": {"nodes": [{"name": "cpu", "cpu": 64, "memory": "256Gi",
                                  "power": {"idleWatts": 100, "maxWatts": 500}}]}}
    r = api.post("/v1/sites", json=site)
    assert r.status_code == 201, r.text
    assert r.json()["nodes"] == 1 and r.json()["simulated"] is True
    assert api.post("/v1/sites", json=site).status_code == 409
    nodes = api.get("/v1/nodes", params={"tier": "hpc"}).json()["items"]
    assert [n["id"] for n in nodes] == ["hpc/cpu"] and nodes[0]["simulated"] is True
    assert api.get("/v1/nodes/hpc/cpu").json()["capacity"]["cpu"] == 64
    assert api.get("/v1/nodes/hpc/none").status_code == 404
    assert api.get("/v1/devices").json() == {"items": [], "next": None, "total": 0, "limit": 500}
    links = api.get("/v1/topology").json()["links"]
    assert isinstance(links, list)


@pytest.mark.parametrize(("site", "loc", "needle"), [
    ({"name": "x", "kind": "warp"}, ["kind"], "Input should be"),
    ({"name": "Bad_Name", "kind": "sim"}, ["name"], "DNS-1123"),
    ({"name": "x", "kind": "sim", "config": {"nodes": [{"name": "n", "cpu": "many",
                                                        "power": {"idleWatts": 1, "maxWatts": 2}}]}},
     ["config"], "cpu"),
])
def test_site_registration_errors(api, site, loc, needle) -> None:  # type: ignore[no-untyped-def]
    r = api.post("/v1/sites", json=site)
    assert r.status_code == 422, r.text
    problem = r.json()["detail"][0]
    assert problem["loc"] == loc and needle in problem["msg"]


def test_health_ready_metrics(api) -> None:  # type: ignore[no-untyped-def]
    assert api.get("/healthz").json() == {"status": "ok"}
    from tests.helpers import wait_for
    wait_for(lambda: api.get("/readyz").status_code == 200, message="readyz")
    wid = api.post("/v1/workflows", json=workflow()).json()["id"]
    wait_state(api, wid, ("Succeeded",))
    # the gauges are set at the end of the reconcile cycle that finished the workflow
    text = wait_for(lambda: (t := api.get("/metrics").text)
                    and 'continuum_workflows{state="Succeeded"} 1.0' in t and t,
                    message="the workflows gauge to count the finished workflow")
    assert 'continuum_placements_total{site="cloud",tier="cloud"} 2.0' in text
    assert "continuum_reconcile_cycle_seconds_bucket" in text
    assert "/v1/workflows" in api.get("/openapi.json").json()["paths"]
    assert api.get("/docs").status_code == 200


# ---------------------------------------------------------------- validation errors

def _task(**kw):  # type: ignore[no-untyped-def]
    return {"name": "t", "command": ["true"], **kw}


VALIDATION_CASES = [
    ("cycle", [_task(name="a", dependsOn=["c"]), _task(name="b", dependsOn=["a"]),
               _task(name="c", dependsOn=["b"])],
     ["spec", "tasks", 0, "dependsOn"], "dependency cycle a → c → b → a"),
    ("self-cycle", [_task(name="a", dependsOn=["a"])],
     ["spec", "tasks", 0, "dependsOn"], "dependency cycle a → a"),
    ("cycle via input", [_task(name="a", inputs=[{"name": "y"}], outputs=[{"name": "x", "path": "x"}]),
                         _task(name="b", inputs=[{"name": "x"}], outputs=[{"name": "y", "path": "y"}])],
     ["spec", "tasks", 0, "dependsOn"], "dependency cycle"),
    ("unknown dependency", [_task(name="a", dependsOn=["ghost"])],
     ["spec", "tasks", 0, "dependsOn", 0], "depends on 'ghost', which is not a task"),
    ("duplicate task", [_task(name="a"), _task(name="a")],
     ["spec", "tasks", 1, "name"], "task name 'a' is used twice"),
    ("malformed cpu", [_task(resources={"cpu": "lots"})],
     ["spec", "tasks", 0, "resources", "cpu"], "use cores like 2 or 0.5, or millicores like 500m"),
    ("malformed memory", [_task(resources={"memory": "12XB"})],
     ["spec", "tasks", 0, "resources", "memory"], "Ki/Mi/Gi/Ti"),
    ("malformed duration", [_task(timeout="soon")],
     ["spec", "tasks", 0, "timeout"], "units like 30s, 5m, 2h"),
    ("too big for any node", [_task(resources={"cpu": 512})],
     ["spec", "tasks", 0, "resources"], "largest node"),
    ("too much memory", [_task(resources={"memory": "1Ti"})],
     ["spec", "tasks", 0, "resources"], "memory"),
    ("unknown field", [_task(bogus=1)],
     ["spec", "tasks", 0, "bogus"], "unknown field 'bogus'"),
    ("unknown input", [_task(inputs=[{"name": "nothing"}])],
     ["spec", "tasks", 0, "inputs", 0, "name"], "is not an output of any task"),
    ("bad task name", [_task(name="Train_Model")],
     ["spec", "tasks", 0, "name"], "DNS-1123"),
    ("no entrypoint", [{"name": "t"}],
     ["spec", "tasks", 0], "give exactly one of 'command'"),
    ("unknown dataset", [_task(datasets=["lake"])],
     ["spec", "tasks", 0, "datasets", 0], "not declared in spec.datasets"),
]


@pytest.mark.parametrize(("case", "tasks", "loc", "needle"), VALIDATION_CASES,
                         ids=[c[0] for c in VALIDATION_CASES])
def test_validation_errors_name_the_field(api, case, tasks, loc, needle) -> None:  # type: ignore[no-untyped-def]
    r = api.post("/v1/workflows", json=workflow(tasks=tasks))
    assert r.status_code == 422, r.text
    problems = r.json()["detail"]
    match = [p for p in problems if p["loc"] == loc]
    assert match, f"no problem at {loc}: {problems}"
    assert needle in match[0]["msg"], match[0]["msg"]
    assert api.get("/v1/workflows").json()["total"] == 0  # nothing stored


@pytest.mark.parametrize(("body", "ctype", "needle"), [
    (b"apiVersion: continuum/v1\nkind: [", "application/yaml", "not valid YAML at line 2"),
    (b'{"apiVersion": ', "application/json", "not valid JSON at line 1"),
    (b"", "application/json", "body is empty"),
    (b"[1, 2]", "application/json", "must be a Workflow object"),
    (json.dumps({**workflow(), "apiVersion": "v2"}).encode(), "application/json",
     "apiVersion must be 'continuum/v1'"),
])
def test_unparseable_bodies(api, body, ctype, needle) -> None:  # type: ignore[no-untyped-def]
    r = api.post("/v1/workflows", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"][0]["msg"]


def test_oversized_body(api) -> None:  # type: ignore[no-untyped-def]
    r = api.post("/v1/workflows", content=b" " * (2 << 20),
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"][0]["msg"]


def test_artifacts_of_a_finished_workflow_are_closed(api) -> None:  # type: ignore[no-untyped-def]
    wid = api.post("/v1/workflows", json=workflow()).json()["id"]
    wait_state(api, wid, ("Succeeded",))
    r = api.put(artifact_url(api, wid, run_of(api, wid, "a"), "x"), content=b"overwrite")
    assert r.status_code == 409 and "can no longer change" in r.json()["detail"]
    assert b"simulated" in api.get(f"/v1/artifacts/{wid}/x").content
