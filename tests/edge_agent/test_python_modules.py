"""What a device's python3 can import, announced by the agent and honoured by placement.

Aspects: the runtime lists the modules of the ``python3`` on the runs' PATH (another
interpreter, another list; none on the PATH, an empty list); end to end with a real
Mosquitto and two real agents, one whose ``python3`` has scikit-learn and one whose
``python3`` has not: a task that ``requires: {python: [sklearn]}`` runs on the first,
and one pinned to the second is unschedulable with a reason naming the module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge_agent.runtime import Runtime
from tests.conftest import AgentFactory, Mosquitto
from tests.control_plane.harness import control_plane, wait_state, workflow
from tests.helpers import wait_for


def python_on_path(d: Path, target: str) -> str:
    """A directory whose ``python3`` runs ``target``; returns it as a PATH."""
    d.mkdir(parents=True)
    exe = d / "python3"
    exe.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    exe.chmod(0o755)
    return f"{d}:/usr/bin:/bin"


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    return {"with": python_on_path(tmp_path / "with", sys.executable),  # this venv: sklearn
            "without": python_on_path(tmp_path / "without", "/usr/bin/python3 -S"),
            "none": str(tmp_path / "empty")}


def test_runtime_lists_the_modules_of_the_python3_runs_get(
        tmp_path: Path, paths: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime(tmp_path / "state")
    monkeypatch.setenv("PATH", paths["with"])
    mods = rt.python_modules()
    assert mods is not None and {"sklearn", "numpy", "json"} <= set(mods)
    monkeypatch.setenv("PATH", paths["without"])
    mods = rt.python_modules()
    assert mods is not None and "json" in mods and "sklearn" not in mods
    monkeypatch.setenv("PATH", paths["none"])
    assert rt.python_modules() == []


def test_placement_keeps_sklearn_tasks_on_devices_that_have_it(
        tmp_path: Path, paths: dict[str, str], mosquitto: Mosquitto,
        agents: AgentFactory) -> None:
    agents.trust(tmp_path / "state")
    good = agents.spawn(None, "--label", "box=good", env={"PATH": paths["with"]})
    bare = agents.spawn(None, "--label", "box=bare", env={"PATH": paths["without"]})
    with control_plane(tmp_path / "state") as (_, api):
        site = {"name": "lab", "kind": "devices", "tier": "device", "location": "dc",
                "config": {"broker": mosquitto.url}}
        assert api.post("/v1/sites", json=site).status_code == 201

        def joined() -> bool:
            ready = {n["name"] for n in api.get("/v1/nodes?site=lab").json()["items"]
                     if n["ready"]}
            return {good.device_id, bare.device_id} <= ready

        wait_for(joined, 20, message=lambda: f"both agents ready; logs:\n{bare.logs()}")
        task = {"name": "fit", "command": ["python3", "-c", "import sklearn"],
                "resources": {"cpu": "500m", "memory": "128Mi"},
                "requires": {"python": ["sklearn"]}, "constraints": {"tiers": ["device"]}}
        wid = api.post("/v1/workflows", json=workflow("fits", [task])).json()["id"]
        wf = wait_state(api, wid, ("Succeeded", "Failed"), timeout=60)
        assert wf["state"] == "Succeeded", wf
        assert [r["node"] for r in wf["runs"]] == [f"lab/{good.device_id}"]

        pinned = {**task, "constraints": {"tiers": ["device"], "labels": {"box": "bare"}}}
        wid = api.post("/v1/workflows", json=workflow("pinned", [pinned])).json()["id"]

        def reason() -> str | None:
            return api.get(f"/v1/workflows/{wid}").json()["reason"] or None

        msg = wait_for(reason, 20, message="an unschedulable reason")
        assert "1 lack required python modules (lacks python module sklearn)" in msg, msg
