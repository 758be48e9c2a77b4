"""Prometheus sees the whole continuum: the shipped files and the control plane's /metrics.

Aspects: ``promtool check config`` / ``check rules`` pass on deploy/prometheus (and
fail on a broken rule, so the check means something); the real Prometheus scrapes a
control plane serving HTTP, and a real agent's telemetry (over the real Mosquitto →
devices adapter → /metrics) is queryable from it with device labels, its measured
RTT included and in GET /v1/topology as measured; every recording rule evaluates
without error in that Prometheus; the Grafana dashboard parses and every metric
name in its queries (and in the alert rules) exists: on the control plane's /metrics,
on the node-exporter, or as a recording rule.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from continuum.federation import FederationDocument
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from tests.conftest import REPO, AgentFactory, free_port
from tests.helpers import admin_headers, wait_for
from tests.monitoring.prometheus_fixture import Prometheus

DEPLOY = REPO / "deploy" / "prometheus"
RULES = sorted((DEPLOY / "rules").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "continuum-dashboard.json"
DEVICE = "prom-dev-1"

# ---------------------------------------------------------------- promtool


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", *args], capture_output=True, text=True,
                          timeout=60)


def test_promtool_accepts_the_shipped_config_and_rules() -> None:
    r = promtool("config", str(DEPLOY / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(RULES)} rule files found" in r.stdout + r.stderr
    r = promtool("rules", *map(str, RULES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum(rate(continuum_placements_total[5m]"}]}]}))
    r = promtool("rules", str(bad))
    assert r.returncode != 0 and "parse error" in r.stdout + r.stderr


# ---------------------------------------------------------------- PromQL metric names

_FUNCS_AND_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (selectors), skipping functions,
    aggregations, label names and matchers, durations, strings and keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                        # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                       # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word, rest = m.group(0), e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in _FUNCS_AND_WORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # 1e3, 0.5
        names.add(word)
    return names


@pytest.mark.parametrize("expr, names", [
    ('sum by (site, tier) (rate(continuum_placements_total{site=~"a|b"}[5m]))',
     {"continuum_placements_total"}),
    ("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 1e3", {"x_bucket"}),
    ("1 - a / on (instance) group_left b or c unless d", {"a", "b", "c", "d"}),
    ('up{job="continuum"} == 0', {"up"}),
])
def test_metric_names_parser(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def exposition_names(text: str) -> set[str]:
    """Every series name a /metrics page can produce, sampled or only declared."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter":
                names |= {f"{name}_total", f"{name}_created"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# ---------------------------------------------------------------- a live continuum


def continuum_federation(broker: str) -> FederationDocument:
    return FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "scrape"},
        "spec": {
            "controlPlane": {"location": "dc"},
            "locations": [{"name": "dc", "lat": 50.1, "lon": 8.7},
                          {"name": "shop-floor", "lat": 48.1, "lon": 11.6}],
            "sites": [{"name": "fleet", "kind": "devices", "tier": "device",
                       "location": "shop-floor", "config": {"broker": broker}}],
        },
    })


class Served:
    """A control plane serving its API over real HTTP on 127.0.0.1:``port``."""

    def __init__(self, cp: ControlPlane, port: int) -> None:
        self.cp, self.port = cp, port
        self.headers = admin_headers(cp)
        """The bootstrap admin token's ``Authorization`` header."""
        self.server = uvicorn.Server(uvicorn.Config(cp.app, host="127.0.0.1", port=port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.cp.start()
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=20, message="uvicorn to start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.cp.stop()


@pytest.fixture(scope="module")
def continuum(tmp_path_factory: pytest.TempPathFactory, mosquitto: Any,
              prometheus: Prometheus) -> Iterator[Served]:
    """A served control plane with one real agent, scraped by the real Prometheus."""
    tmp = tmp_path_factory.mktemp("scrape")
    port = free_port()
    settings = Settings(state_dir=tmp / "cp", port=port, broker_url=mosquitto.url,
                        reconcile_interval_s=0.1, inventory_interval_s=0.2,
                        metrics_interval_s=0.3)
    agents = AgentFactory(mosquitto, tmp)
    with Served(ControlPlane(settings, continuum_federation(mosquitto.url)), port) as served:
        agents.trust(settings.state_dir)
        agents.spawn(DEVICE, "--location", "shop-floor")
        prometheus.target("continuum", f"127.0.0.1:{port}")
        try:
            yield served
        finally:
            prometheus.target("continuum")
            agents.close()


def test_prometheus_scrapes_the_control_plane_and_sees_the_device(
        continuum: Served, prometheus: Prometheus) -> None:
    up = wait_for(lambda: prometheus.query('up{job="continuum"} == 1'), timeout=60,
                  message=lambda: f"Prometheus to scrape {continuum.url}/metrics: "
                  f"{prometheus.query('up')}")
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{continuum.port}"
    sel = f'{{job="continuum",device="{DEVICE}"}}'
    (cpu,) = wait_for(lambda: prometheus.query(f"continuum_device_cpu_utilisation_ratio{sel}"),
                      timeout=60, message="the device's CPU utilisation in Prometheus")
    assert cpu["metric"]["site"] == "fleet" and cpu["metric"]["location"] == "shop-floor"
    assert 0.0 <= float(cpu["value"][1]) <= 1.0
    (online,) = prometheus.query(f"continuum_device_up{sel}")
    assert online["value"][1] == "1"
    (power,) = prometheus.query(f"continuum_device_power_watts{sel}")
    assert power["metric"]["source"] == "model" and float(power["value"][1]) > 0
    # the device measured its round trip to the broker; it is on /metrics and in the topology
    (rtt,) = wait_for(lambda: prometheus.query(f"continuum_device_rtt_seconds{sel}"),
                      timeout=30, message="the device's RTT in Prometheus")
    assert 0 < float(rtt["value"][1]) < 1.0
    links = httpx.get(f"{continuum.url}/v1/topology", headers=continuum.headers, timeout=5).json()["links"]
    (link,) = [lk for lk in links if {lk["a"], lk["b"]} == {"dc", "shop-floor"}]
    assert link["source"] == "measured" and link["rttMs"] < 1000 and "observedAt" in link
    # the control plane's own series are there too
    assert prometheus.query('continuum_reconcile_cycle_seconds_count{job="continuum"} > 0')
    assert prometheus.query('continuum_queue_depth{job="continuum",queue="ready"}')


def test_recording_rules_evaluate_in_prometheus(continuum: Served,
                                                prometheus: Prometheus) -> None:
    def groups() -> list[dict[str, Any]]:
        r = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()
        return list(r["data"]["groups"])

    def evaluated() -> bool:
        rules = [r for g in groups() for r in g["rules"]]
        return bool(rules) and all(r.get("lastEvaluation", "").startswith("20") and
                                   not r["lastEvaluation"].startswith("0001") for r in rules)

    wait_for(evaluated, timeout=30, message=lambda: f"every rule evaluated: {groups()}")
    bad = [(r["name"], r.get("lastError")) for g in groups() for r in g["rules"]
           if r["health"] != "ok"]
    assert not bad
    assert wait_for(lambda: prometheus.query("instance:node_cpu_utilisation:ratio"), timeout=30,
                    message="the node CPU recording rule to produce a series")


def test_dashboard_and_alerts_name_only_existing_metrics(continuum: Served,
                                                         prometheus: Prometheus) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) == len(dashboard["panels"]) >= 10
    wait_for(lambda: f'device="{DEVICE}"' in httpx.get(f"{continuum.url}/metrics",
                                                       timeout=5).text,
             timeout=60, message="the device's telemetry on /metrics")
    known = exposition_names(httpx.get(f"{continuum.url}/metrics", timeout=5).text)
    known |= exposition_names(httpx.get(f"http://{prometheus.exporter_instance}/metrics",
                                        timeout=5).text)
    known.add("up")
    rules = [r for f in RULES for g in yaml.safe_load(f.read_text())["groups"]
             for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    known |= recorded
    missing = {e: sorted(metric_names(e) - known) for e in exprs if metric_names(e) - known}
    assert not missing, f"dashboard queries name unknown metrics: {missing}"
    assert all(metric_names(e) for e in exprs)
    # the rules themselves read only existing metrics (records may use earlier records)
    missing = {r.get("record") or r["alert"]: sorted(metric_names(r["expr"]) - known)
               for r in rules if metric_names(r["expr"]) - known}
    assert not missing, f"rules name unknown metrics: {missing}"
