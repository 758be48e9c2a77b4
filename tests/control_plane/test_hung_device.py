"""A hung device end to end (issue 16): real Mosquitto, real agents, one control plane.

An agent whose process is stopped (SIGSTOP) keeps its TCP connection open, so the broker
publishes no last will for a keepalive and a half; the devices adapter declares it lost
once it has been silent for two of the heartbeat intervals its Hello announces (the site
sets no ``offlineAfter``), its node leaves the placeable inventory, and the migration
controller re-places its running work on the other device; resumed (SIGCONT), the agent
obeys the cancel it missed and the device is placeable again; the workflow succeeds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from adapters.devices import LOST_AFTER_HEARTBEATS
from continuum.federation import FederationDocument
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from tests.conftest import AgentFactory, Mosquitto
from tests.control_plane.harness import wait_state
from tests.helpers import admin_headers, gate_source, wait_for

HEARTBEAT_S = 1.0
GRACE_S = HEARTBEAT_S / 2
PY = sys.executable


def test_work_of_a_hung_device_is_replaced_after_two_heartbeats(
        mosquitto: Mosquitto, agents: AgentFactory, tmp_path: Path) -> None:
    fed = FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "hung"},
        "spec": {
            "controlPlane": {"location": "factory"},
            "locations": [{"name": "factory", "lat": 48.1, "lon": 11.6}],
            "sites": [{"name": "fleet", "kind": "devices", "tier": "device",
                       "location": "factory", "config": {"broker": mosquitto.url}}],
        },
    })
    settings = Settings(state_dir=tmp_path / "cp", reconcile_interval_s=0.05,
                        inventory_interval_s=0.05, retry_backoff_s=30.0,
                        model_retrain_interval_s=0, migration_lost_grace_s=GRACE_S)
    cp = ControlPlane(settings, fed)
    agents.trust(settings.state_dir)
    devs = [agents.spawn(f"hung-{k}", "--profile", "pi4", "--location", "factory",
                         telemetry_interval=HEARTBEAT_S) for k in range(2)]
    gate = tmp_path / "gate.pid"
    cp.start()
    try:
        with TestClient(cp.app, headers=admin_headers(cp)) as client:
            wait_for(lambda: sum(n.ready for n in cp.federation.placeable_nodes()) == 2, 20,
                     message="both devices ready")
            doc = {"apiVersion": "continuum/v1", "kind": "Workflow",
                   "metadata": {"name": "hold"},
                   "spec": {"tasks": [{"name": "hold", "script": {
                       "interpreter": [PY], "source": gate_source(gate, timeout=60)},
                       "resources": {"cpu": 1, "memory": "64Mi"},
                       "constraints": {"tiers": ["device"]}}]}}
            wf = client.post("/v1/workflows", json=doc).json()["id"]

            def runs() -> list[dict[str, Any]]:
                items: list[dict[str, Any]] = client.get(
                    "/v1/runs", params={"workflow": wf}).json()["items"]
                return items

            first = wait_for(lambda: next((r for r in runs() if r["state"] == "Running"),
                                          None), 30, message="the first run running")
            wait_for(gate.exists, 30, message="the task to publish its pid")
            pid1 = int(gate.read_text())
            victim = next(d for d in devs if first["node"].endswith(d.device_id))
            os.kill(victim.proc.pid, signal.SIGSTOP)  # hung: silent, connection open
            stopped_at = time.time()
            try:
                second = wait_for(lambda: next((r for r in runs() if r["id"] != first["id"]),
                                               None), 30, message="a new run of the task")
                assert victim.device_id not in {
                    n.name for n in cp.federation.placeable_nodes() if n.ready}
                placed = client.get(f"/v1/runs/{second['id']}").json()
                assert placed["node"] != first["node"]
                [dev] = [d for d in client.get("/v1/devices").json()["items"]
                         if d["deviceId"] == victim.device_id]
                assert dev["state"] == "lost", dev
            finally:
                os.kill(victim.proc.pid, signal.SIGCONT)
            events = client.get(f"/v1/workflows/{wf}").json()["events"]
            migrated = [e for e in events if e["type"] == "RunMigrated"]
            assert migrated and "not ready" in migrated[0]["message"], events
            placed_at = datetime.fromisoformat(placed["placedAt"]).timestamp()
            print(f"re-placed {placed_at - stopped_at:.2f} s after the agent was stopped")
            # lost two heartbeats after its last message (before the stop), then the grace;
            # 1 s of margin for the inventory and reconcile cycles on a busy host
            assert placed_at - stopped_at <= LOST_AFTER_HEARTBEATS * HEARTBEAT_S + GRACE_S + 1.0

            # resumed, the agent obeys the cancel it missed; the device is placeable again
            wait_for(lambda: client.get(f"/v1/runs/{first['id']}").json()["state"]
                     == "Migrated", 30, message="the first run Migrated")
            wait_for(lambda: victim.device_id in {
                n.name for n in cp.federation.placeable_nodes() if n.ready}, 20,
                message=lambda: f"the resumed device ready again; log:\n{victim.logs()}")
            wait_for(lambda: gate.exists() and int(gate.read_text()) != pid1, 30,
                     message="the re-placed run to publish its pid")
            for pid in {pid1, int(gate.read_text())}:
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            done = wait_state(client, wf, ("Succeeded", "Failed"), timeout=60)
            assert done["state"] == "Succeeded", done
    finally:
        cp.stop()
