"""The control plane's own /metrics added for monitoring, on the in-process harness.

Aspects: finished runs feed the predicted-vs-observed error histogram (runtime and
energy, by site); queue depths and the per-site dispatched queue are exported; a
running service with a latency SLO exports its current RTT / SLO ratio, and the
series goes away when it stops; placement decisions carry the NodeLoad score.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.control_plane.harness import control_plane, wait_state, workflow
from tests.helpers import wait_for


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of ``name{labels}`` in an exposition (labels matched as a subset)."""
    for line in text.splitlines():
        m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            return float(m.group(2))
    return None


def test_prediction_error_and_queue_depths(tmp_path: Path) -> None:
    with control_plane(tmp_path) as (cp, client):
        wf = client.post("/v1/workflows", json=workflow("pred")).json()
        done = wait_state(client, wf["id"], ("Succeeded", "Failed"))
        assert done["state"] == "Succeeded"
        assert all("NodeLoad" in r["placement"]["scores"] for r in done["runs"])
        text = wait_for(lambda: (t := client.get("/metrics").text) and sample(
            t, "continuum_prediction_relative_error_count", quantity="energy", site="cloud")
            == 2 and t, timeout=10, message="two energy observations")
        assert sample(text, "continuum_prediction_relative_error_count",
                      quantity="runtime", site="cloud") == 2
        # the twin runs the analytic model's own formula: the error is (near) zero
        assert sample(text, "continuum_prediction_relative_error_bucket",
                      quantity="runtime", site="cloud", le="0.01") == 2
        assert sample(text, "continuum_queue_depth", queue="ready") == 0
        assert sample(text, "continuum_queue_depth", queue="placed") == 0
        assert sample(text, "continuum_site_queue_depth", site="cloud") == 0


def test_slo_ratio_of_a_running_service(tmp_path: Path) -> None:
    with control_plane(tmp_path) as (cp, client):
        doc = workflow("svc", [{"name": "api", "kind": "service", "command": ["serve"],
                                "slo": {"target": "dc", "latencyMs": 10}}])
        wf = client.post("/v1/workflows", json=doc).json()

        def ratio() -> float | None:
            return sample(client.get("/metrics").text, "continuum_slo_latency_ratio",
                          workflow=wf["id"], task="api", target="dc")

        value = wait_for(ratio, timeout=20, message="the service's SLO ratio on /metrics")
        assert value == 0.5 / 10  # same location: LOCAL_RTT_MS over the 10 ms SLO
        assert client.delete(f"/v1/workflows/{wf['id']}").status_code == 202
        wait_state(client, wf["id"], ("Cancelled",))
        wait_for(lambda: ratio() is None, timeout=10, message="the SLO series to go away")
