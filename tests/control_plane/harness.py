"""An in-process control plane on a small simulated federation, for API and reconciler tests.

The federation has one simulated cloud site (``cloud``: two 8-core nodes) whose twin
runs at 1000× virtual time, so a task of ``work: 100`` core-seconds on one core takes
0.1 s of wall time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from continuum.federation import FederationDocument
from control_plane.artifact_access import ArtifactCapabilities, Mode
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from tests.helpers import admin_headers, admin_token, wait_for


def federation(failure_rate: float = 0.0, time_scale: float = 1000.0) -> FederationDocument:
    return FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "test"},
        "spec": {
            "controlPlane": {"location": "dc"},
            "locations": [{"name": "dc", "lat": 50.1, "lon": 8.7}],
            "sites": [{
                "name": "cloud", "kind": "sim", "tier": "cloud", "location": "dc",
                "config": {"timeScale": time_scale, "failureRate": failure_rate, "nodes": [
                    {"name": "vm", "count": 2, "cpu": 8, "memory": "32Gi", "speed": 1.0,
                     "power": {"idleWatts": 50, "maxWatts": 200, "source": "test figure"}}]},
            }],
        },
    })


def workflow(name: str = "wf", tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A valid workflow document; default: ``a`` → ``b`` passing artifact ``x``."""
    return {
        "apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": name},
        "spec": {"tasks": tasks or [
            {"name": "a", "command": ["true"], "work": 100, "outputs": [{"name": "x", "path": "x"}]},
            {"name": "b", "command": ["true"], "work": 100, "inputs": [{"name": "x"}]},
        ]},
    }


@contextmanager
def control_plane(state_dir: Path, **kw: Any) -> Iterator[tuple[ControlPlane, TestClient]]:
    """A started control plane and a TestClient on its app carrying the bootstrap admin
    token; stopped afterwards."""
    fed_kw = {k: kw.pop(k) for k in ("failure_rate", "time_scale") if k in kw}
    settings = Settings(state_dir=state_dir, reconcile_interval_s=0.05,
                        inventory_interval_s=0.05, retry_backoff_s=0.05, **kw)
    cp = ControlPlane(settings, federation(**fed_kw))
    cp.start()
    try:
        with TestClient(cp.app, headers=admin_headers(cp)) as client:
            yield cp, client
    finally:
        cp.stop()


def artifact_url(client: TestClient, workflow_id: str, run_id: str, name: str,
                 mode: str = "write") -> str:
    """The path and query of artifact ``name`` carrying run ``run_id``'s ``mode``
    capability, minted with the served control plane's key (as dispatch mints it)."""
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    caps = ArtifactCapabilities.for_state_dir(settings.state_dir,
                                              settings.artifact_capability_ttl_s)
    return caps.url("", workflow_id, run_id, name, Mode(mode))


def run_of(client: TestClient, workflow_id: str, task: str) -> str:
    """The id of the latest run of ``task`` in the workflow."""
    runs = client.get("/v1/runs", params={"workflow": workflow_id}).json()["items"]
    return [r["id"] for r in runs if r["task"] == task][-1]


def wait_state(client: TestClient, workflow_id: str, states: tuple[str, ...],
               timeout: float = 20.0) -> dict[str, Any]:
    """Poll ``GET /v1/workflows/{id}`` until its state is one of ``states``."""
    def check() -> dict[str, Any] | None:
        wf = client.get(f"/v1/workflows/{workflow_id}").json()
        return wf if wf["state"] in states else None
    return wait_for(check, timeout=timeout,
                    message=lambda: f"workflow {workflow_id} to reach {states}; now "
                    f"{client.get(f'/v1/workflows/{workflow_id}').json()}")


@contextmanager
def served(state_dir: Path, **kw: Any) -> Iterator[str]:
    """:func:`control_plane` served over real HTTP on a free loopback port; yields its URL
    (for the CLI and the Python client, which talk HTTP). While it serves,
    ``CONTINUUM_TOKEN`` holds its admin token, so clients and CLI commands (in this process
    or spawned) are the admin."""
    import os
    import threading

    import uvicorn

    from control_plane.client import Client
    from tests.conftest import free_port

    with control_plane(state_dir, **kw) as (cp, _):
        before = os.environ.get("CONTINUUM_TOKEN")
        os.environ["CONTINUUM_TOKEN"] = admin_token(cp)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(cp.app, host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        wait_for(Client(url).ready, timeout=10, message="API ready")
        try:
            yield url
        finally:
            server.should_exit = True
            thread.join(10)
            if before is None:
                os.environ.pop("CONTINUUM_TOKEN", None)
            else:
                os.environ["CONTINUUM_TOKEN"] = before
