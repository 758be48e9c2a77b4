"""Live metrics against a real Prometheus and node-exporter (deploy/dev/prometheus.sh).

Aspects: every catalog query is PromQL the real Prometheus accepts; a real blackbox
exporter's probe RTT enters the topology as measured; this machine,
registered as a node mapped to the node-exporter, shows its real CPU utilisation in
GET /v1/nodes (the very value Prometheus computes at that timestamp) and its memory
utilisation (against psutil); a stale and then a stopped Prometheus degrade the site
with the reason while workflows are still placed and finish; a hung Prometheus times
out, the loop goes on and the site recovers on resume; unknown catalog names
are a 422 naming the field; a PromQL override Prometheus rejects degrades the site
with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from fastapi.testclient import TestClient

from continuum.federation import FederationDocument
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from monitoring.catalog import CATALOG
from monitoring.collector import HttpPromClient
from tests.control_plane.harness import wait_state, workflow
from tests.helpers import admin_headers, wait_for
from tests.monitoring.prometheus_fixture import Prometheus, start_prometheus

NODE = "this-host"


def lab_federation(prom_url: str, instance: str, **monitoring: Any) -> FederationDocument:
    """A sim site ``lab`` whose one node is this machine, mapped to the node-exporter."""
    return FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "prom"},
        "spec": {
            "controlPlane": {"location": "dc"},
            "locations": [{"name": "dc", "lat": 50.1, "lon": 8.7}],
            "sites": [{
                "name": "lab", "kind": "sim", "tier": "edge", "location": "dc",
                "prometheusUrl": prom_url,
                "monitoring": {"instances": {NODE: instance}, "window": "10s",
                               **monitoring},
                "config": {"timeScale": 1000, "nodes": [
                    {"name": NODE, "cpu": psutil.cpu_count(), "memory": "4Gi",
                     "power": {"idleWatts": 20, "maxWatts": 60, "source": "test figure"}}]},
            }],
        },
    })


@contextmanager
def lab(tmp_path: Path, prom: Prometheus, **monitoring: Any) -> Iterator[tuple[ControlPlane,
                                                                             TestClient]]:
    settings = Settings(state_dir=tmp_path / "cp", reconcile_interval_s=0.05,
                        inventory_interval_s=0.1, retry_backoff_s=0.05, metrics_interval_s=0.3)
    cp = ControlPlane(settings, lab_federation(prom.url, prom.exporter_instance, **monitoring))
    cp.start()
    try:
        with TestClient(cp.app, headers=admin_headers(cp)) as client:
            yield cp, client
    finally:
        cp.stop()


def node_view(client: TestClient) -> dict[str, Any]:
    r = client.get(f"/v1/nodes/lab/{NODE}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def from_prometheus(view: dict[str, Any]) -> bool:
    return view["live"]["utilisationSource"] == "prometheus:node-exporter"


def test_every_catalog_query_is_accepted_by_prometheus(prometheus: Prometheus) -> None:
    client = HttpPromClient(prometheus.url, timeout_s=5)
    for entry in CATALOG:
        client.query(entry.query("1m"))  # raises QueryError on a PromQL error


def test_this_machine_shows_its_real_utilisation(tmp_path: Path, prometheus: Prometheus) -> None:
    with lab(tmp_path, prometheus) as (cp, client):
        view = wait_for(lambda: (v := node_view(client)) and from_prometheus(v) and v,
                        timeout=60, message=lambda: f"Prometheus values on the node: "
                        f"{node_view(client)['live']}")
        live, cpu = view["live"], view["metrics"]["cpu_utilisation"]
        assert 0.0 <= live["utilisation"] <= 1.0
        assert 0.0 <= live["utilisationAgeS"] < 10 and live["stale"] is False
        # the very value Prometheus computes for this node-exporter at that instant
        (series,) = prometheus.query(
            f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle",'
            f'instance="{prometheus.exporter_instance}"}}[10s]))', at=_ts(cpu["at"]))
        assert abs(float(series["value"][1]) - live["utilisation"]) < 1e-9
        # no power meter here: the node's linear power model at the measured utilisation
        assert live["powerSource"] == "model"
        assert abs(live["powerWatts"] - (20 + (60 - 20) * live["utilisation"])) < 1e-9
        # memory in use agrees with psutil's reading of this machine
        vm = psutil.virtual_memory()
        assert abs(live["memoryUtilisation"] - (1 - vm.available / vm.total)) < 0.05
        # the node list shows the same, and the site stays Ready
        (listed,) = [n for n in client.get("/v1/nodes").json()["items"] if n["name"] == NODE]
        assert listed["live"]["utilisationSource"] == "prometheus:node-exporter"
        site = client.get("/v1/sites/lab").json()
        assert site["health"] == "Ready", site
        assert site["prometheus"]["error"] is None and site["prometheus"]["series"] > 0


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_stale_then_stopped_prometheus_degrades_but_placement_continues(
        tmp_path: Path) -> None:
    prom = start_prometheus(tmp_path / "prom")  # private: this test stops it
    try:
        with lab(tmp_path, prom, staleAfter=3) as (cp, client):
            wait_for(lambda: from_prometheus(node_view(client)), timeout=60,
                     message="first Prometheus values on the node")
            assert client.get("/v1/sites/lab").json()["health"] == "Ready"

            # stale: the exporter stops, its series vanish, the last value ages
            prom.stop_exporter()
            site = wait_for(lambda: (s := client.get("/v1/sites/lab").json())["health"]
                            == "Degraded" and "stale" in s["message"] and s, timeout=30,
                            message=lambda: f"Degraded/stale: {client.get('/v1/sites/lab').json()}")
            assert f"{NODE}: utilisation" in site["message"] and "bound 3 s" in site["message"]
            view = node_view(client)
            assert view["live"]["stale"] is True and view["live"]["utilisationAgeS"] > 3
            assert view["metrics"]["cpu_utilisation"]["stale"] is True
            wf = client.post("/v1/workflows", json=workflow("while-stale")).json()
            done = wait_state(client, wf["id"], ("Succeeded", "Failed"))
            assert done["state"] == "Succeeded", done
            placement = done["runs"][0]["placement"]
            assert placement["node"] == f"lab/{NODE}" and "NodeLoad" in placement["scores"]
            assert any("stale value, penalised" in r for r in placement["reasons"])

            # stopped: Prometheus itself is gone
            prom.stop()
            site = wait_for(lambda: "unreachable" in (s := client.get("/v1/sites/lab").json())
                            ["message"] and s, timeout=30,
                            message=lambda: f"unreachable: {client.get('/v1/sites/lab').json()}")
            assert site["health"] == "Degraded" and "placement uses the last values" in \
                site["message"]
            assert "Connection refused" in site["prometheus"]["error"]
            wf = client.post("/v1/workflows", json=workflow("while-down")).json()
            assert wait_state(client, wf["id"], ("Succeeded", "Failed"))["state"] == "Succeeded"
            metrics = client.get("/metrics").text
            assert 'continuum_prometheus_up{site="lab"} 0.0' in metrics
    finally:
        prom.stop()


def test_unknown_catalog_names_are_rejected(tmp_path: Path, prometheus: Prometheus) -> None:
    with lab(tmp_path, prometheus) as (cp, client):
        for monitoring, field, hint in (
                ({"queries": {"cpu_utilization": "up"}}, "monitoring.queries.cpu_utilization",
                 "cpu_utilisation"),
                ({"exporters": ["node_exporter"]}, "monitoring.exporters.0", "node-exporter")):
            r = client.post("/v1/sites", json={
                "name": "other", "kind": "sim", "prometheusUrl": prometheus.url,
                "monitoring": monitoring, "config": {"nodes": [
                    {"name": "n", "cpu": 1, "memory": "1Gi",
                     "power": {"idleWatts": 1, "maxWatts": 2}}]}})
            assert r.status_code == 422, r.text
            (problem,) = r.json()["detail"]
            assert ".".join(problem["loc"]) == field and hint in problem["msg"], problem
        r = client.post("/v1/sites", json={"name": "other", "kind": "sim",
                                           "monitoring": {"window": "ten seconds"},
                                           "config": {"nodes": []}})
        assert r.status_code == 422 and "window" in str(r.json()["detail"])


def test_rejected_override_degrades_the_site_with_the_reason(
        tmp_path: Path, prometheus: Prometheus) -> None:
    with lab(tmp_path, prometheus, queries={"memory_utilisation": "sum(("}) as (cp, client):
        site = wait_for(lambda: "rejected" in (s := client.get("/v1/sites/lab").json())
                        ["message"] and s, timeout=30,
                        message=lambda: f"rejected query: {client.get('/v1/sites/lab').json()}")
        assert site["health"] == "Degraded"
        assert "memory_utilisation" in site["message"] and "parse error" in site["message"]
        # the other metrics still arrive
        wait_for(lambda: from_prometheus(node_view(client)), timeout=60,
                 message="CPU utilisation despite the broken memory query")


def test_blackbox_probe_rtt_enters_the_topology_as_measured(
        tmp_path: Path, prometheus: Prometheus) -> None:
    # the real blackbox exporter probes the node-exporter's port (TCP connect)
    prometheus.target("blackbox", prometheus.exporter_instance)
    try:
        with lab(tmp_path, prometheus, probes={prometheus.exporter_instance: "rack-2"}) as (
                cp, client):
            def link() -> dict[str, Any] | None:
                links = client.get("/v1/topology").json()["links"]
                found = [lk for lk in links if {lk["a"], lk["b"]} == {"dc", "rack-2"}]
                return found[0] if found and found[0]["source"] == "measured" else None

            measured = wait_for(link, timeout=60, message=lambda: f"a measured dc↔rack-2 link: "
                                f"{client.get('/v1/topology').json()}")
            assert 0 < measured["rttMs"] < 1000
            (probe,) = prometheus.query(
                f'1000 * probe_duration_seconds{{instance="{prometheus.exporter_instance}"}}',
                at=_ts(measured["observedAt"]))
            assert abs(float(probe["value"][1]) - measured["rttMs"]) < 1e-9
            # pairs nobody measured stay modelled from distance
            assert cp.network.source("dc", "somewhere-else") == "modelled"
    finally:
        prometheus.target("blackbox")


def test_hung_prometheus_times_out_and_scheduling_goes_on(tmp_path: Path) -> None:
    prom = start_prometheus(tmp_path / "prom")  # private: this test hangs it
    try:
        with lab(tmp_path, prom, timeout=1) as (cp, client):
            wait_for(lambda: from_prometheus(node_view(client)), timeout=60,
                     message="first Prometheus values on the node")
            prom.pause()  # accepts connections, never answers
            site = wait_for(lambda: "timed out" in (s := client.get("/v1/sites/lab").json())
                            ["message"] and s, timeout=30,
                            message=lambda: f"a timeout: {client.get('/v1/sites/lab').json()}")
            assert site["health"] == "Degraded" and "unreachable" in site["message"]
            # the reconcile loop is not held up by the hung queries
            assert client.get("/readyz").status_code == 200
            wf = client.post("/v1/workflows", json=workflow("while-hung")).json()
            assert wait_state(client, wf["id"], ("Succeeded", "Failed"))["state"] == "Succeeded"
            prom.resume()
            wait_for(lambda: client.get("/v1/sites/lab").json()["health"] == "Ready",
                     timeout=60, message=lambda: f"Ready again after resume: "
                     f"{client.get('/v1/sites/lab').json()}")
    finally:
        prom.stop()
