"""End to end, with the real Mosquitto and real agent processes.

Aspects: the demo's workflows run to success (device tasks on the devices, heavy tasks
on the cloud/HPC tier); the control plane killed with SIGKILL twice mid-workflow (once
while a device task runs, once while a simulated task runs) and started again on the
same state directory finishes the workflow with nothing lost and nothing run twice.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rich.console import Console

from control_plane.demo import Demo
from tests.conftest import REPO, AgentFactory, Mosquitto, free_port
from tests.helpers import admin_headers, gate_source, open_gate, wait_for


def test_demo_runs_to_success_with_the_real_broker(mosquitto: Mosquitto, tmp_path: Path) -> None:
    out = io.StringIO()
    demo = Demo(console=Console(file=out, width=140), broker_url=mosquitto.url, port=0,
                state_dir=tmp_path, timeout=240)
    code = demo.run()
    assert code == 0, out.getvalue()[-4000:]
    placed = {(wf["name"], r["task"]): r for wf in demo.results for r in wf["runs"]}
    tier = {k: r["placement"]["tier"] for k, r in placed.items()}
    for task in ("capture", "preprocess", "train", "infer"):
        assert tier[("edge-vision", task)] == "device", placed[("edge-vision", task)]
    assert placed[("edge-vision", "capture")]["node"] == "factory-devices/pi-camera-1"
    assert placed[("edge-vision", "train")]["node"] == "factory-devices/jetson-1"
    assert tier[("edge-vision", "fleet-retrain")] in ("cloud", "hpc")
    assert tier[("sensor-analytics", "grade-model")] in ("edge", "cloud")
    # device runs did real work: real exit codes, real bytes moved between devices
    infer = placed[("edge-vision", "infer")]
    assert infer["exitCode"] == 0 and not infer["simulated"]
    assert infer["observed"]["bytesIn"] > 0
    assert "all workflows succeeded" in out.getvalue()


def test_demo_runs_to_success_on_its_embedded_broker(tmp_path: Path) -> None:
    """No ``--broker``: the embedded amqtt, with a user per agent and for the control plane
    (tests/control_plane/test_demo_broker.py checks what it refuses)."""
    out = io.StringIO()
    demo = Demo(console=Console(file=out, width=140), port=0, state_dir=tmp_path, timeout=240)
    code = demo.run()
    assert code == 0, out.getvalue()[-4000:]
    assert "no anonymous clients" in out.getvalue()
    assert "all workflows succeeded" in out.getvalue()
    assert {(r["node"], r["exitCode"]) for wf in demo.results for r in wf["runs"]
            if r["task"] == "capture"} == {("factory-devices/pi-camera-1", 0)}
    users = [line.split(":", 1)[0] for line in (tmp_path / "broker.passwd").read_text().splitlines()]
    assert sorted(users) == sorted(["continuum", "pi-camera-1", "jetson-1"])
    assert (tmp_path / "broker.passwd").stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- crash and restart

def step(name: str, marker: Path, gate: Path | None) -> str:
    """A device task: records that it ran, holds at ``gate`` if given, writes out.txt."""
    return (f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n"
            + (gate_source(gate) if gate else "")
            + f"open('out.txt', 'w').write({name!r} + ' done\\n')\n")


class Server:
    """``continuum server`` as a subprocess on a fixed port and state directory."""

    def __init__(self, tmp: Path, federation: Path, broker: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "control_plane.cli", "server", "--port", str(self.port),
                     "--state-dir", str(tmp / "state"), "--federation", str(federation),
                     "--broker-url", broker, "--log-level", "info"]
        self.log = tmp / "server.log"
        self.state_dir = tmp / "state"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "CONTINUUM_RECONCILE_INTERVAL_S": "0.2"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=30, message=lambda: "server ready; log:\n"
                 + self.log.read_text()[-3000:])

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    @property
    def headers(self) -> dict[str, str]:
        """The bootstrap admin token the server wrote into its state directory."""
        return admin_headers(self.state_dir)

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=5, headers=self.headers).json()


@pytest.fixture
def server(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Server]:
    fed = {"apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "t"},
           "spec": {"controlPlane": {"location": "floor"},
                    "locations": [{"name": "floor", "lat": 48.1, "lon": 11.6}],
                    "sites": [
                        {"name": "fleet", "kind": "devices", "tier": "device", "location": "floor"},
                        {"name": "cloud", "kind": "sim", "tier": "cloud", "location": "floor",
                         "config": {"timeScale": 10, "nodes": [
                             {"name": "vm", "cpu": 16, "memory": "64Gi",
                              "power": {"idleWatts": 80, "maxWatts": 250}}]}}]}}
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(fed))
    s = Server(tmp_path, path, mosquitto.url)
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


def test_sigkill_mid_workflow_loses_nothing_and_runs_nothing_twice(
        server: Server, agents: AgentFactory, tmp_path: Path) -> None:
    marker, gate = tmp_path / "executions.txt", tmp_path / "first.pid"
    agents.trust(tmp_path / "state")  # the server's state directory
    agent = agents.spawn("dev-1", "--location", "floor")
    server.start()
    wait_for(lambda: any(n["ready"] for n in server.get("/v1/nodes?site=fleet")["items"]),
             timeout=20, message="the device to join")

    def device_task(name: str, gated: bool = False, **kw: Any) -> dict[str, Any]:
        return {"name": name,
                "command": [sys.executable, "-c", step(name, marker, gate if gated else None)],
                "resources": {"cpu": "500m", "memory": "128Mi"}, "work": 1,
                "constraints": {"tiers": ["device"]}, **kw}

    doc = {"apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": "crashy"},
           "spec": {"tasks": [
               device_task("first", gated=True, outputs=[{"name": "first.txt", "path": "out.txt"}]),
               {"name": "middle", "command": ["true"], "work": 40, "resources": {"cpu": 1},
                "constraints": {"tiers": ["cloud"]}, "inputs": [{"name": "first.txt"}],
                "outputs": [{"name": "middle.json", "path": "m.json"}]},
               device_task("last", inputs=[{"name": "middle.json"}]),
           ]}}
    r = httpx.post(f"{server.url}/v1/workflows", json=doc, timeout=10, headers=server.headers)
    assert r.status_code == 201, r.text
    wid = r.json()["id"]

    def task_state(name: str) -> str:
        wf = server.get(f"/v1/workflows/{wid}")
        runs = [x for x in wf["runs"] if x["task"] == name]
        return runs[-1]["state"] if runs else "none"

    # 1: kill while the device task runs; it finishes (and uploads) while we are down
    wait_for(lambda: marker.exists() and task_state("first") == "Running", timeout=30,
             message="first running on the device")
    server.kill()
    open_gate(gate)
    server.start()
    # 2: kill while the simulated task runs; the new process re-adopts it by its handle
    wait_for(lambda: task_state("middle") == "Running", timeout=60,
             message=lambda: f"middle running; agent log:\n{agent.logs()[-2000:]}")
    server.kill()
    server.start()
    wf = wait_for(lambda: (w := server.get(f"/v1/workflows/{wid}"))["state"] in
                  ("Succeeded", "Failed") and w, timeout=60,
                  message=lambda: f"workflow to finish: {server.get(f'/v1/workflows/{wid}')}")
    assert wf["state"] == "Succeeded", wf["reason"]
    assert sorted(x["task"] for x in wf["runs"]) == ["first", "last", "middle"]
    assert marker.read_text().split() == ["first", "last"]  # each device task ran once
    got = httpx.get(f"{server.url}/v1/artifacts/{wid}/first.txt", timeout=5,
                    headers=server.headers)
    assert got.text == "first done\n"
