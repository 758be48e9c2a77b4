"""The collector's join and staleness rules, table-driven, over the one HTTP seam.

Aspects: one query per catalog entry per site per refresh (never per node); how a
series finds its node (instances map, node label, name, host without port); which
exporter wins a field (Kepler over IPMI over RAPL; node-exporter over Slurm); NaN
and malformed samples are skipped; timestamps are kept; stale values mark the node
and degrade the site with the reason; an unreachable Prometheus keeps the last values;
a site whose series match no node says how to map them; blackbox probe RTTs and the
devices' RTTs enter the topology as measured; NodeLoad's penalty for stale values; the
HTTP session of a site whose URL or timeout changed, or that was removed, is closed and
dropped.
The real-Prometheus behaviour is in test_prometheus*.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from continuum.model import Node, PowerProfile, Resources, SiteHealth, SiteKind, SiteSpec
from monitoring.catalog import CATALOG, site_catalog
from monitoring.collector import INSTANCE_LABEL, Collector, Unreachable
from monitoring.telemetry import DeviceReading
from monitoring.topology import TopologyModel
from placement.network import StaticNetwork
from placement.plugins.load import MAX_LOAD, STALE_PENALTY, effective_load
from placement.snapshot import Snapshot

T0 = 1_800_000_000.0


class FakeProm:
    """Answers each PromQL with canned series; records every query; can go down."""

    def __init__(self, answers: dict[str, list[tuple[dict[str, str], Any]]]) -> None:
        self.answers = answers
        self.queries: list[str] = []
        self.down = False
        self.at = T0

    def query(self, promql: str) -> list[dict[str, Any]]:
        self.queries.append(promql)
        if self.down:
            raise Unreachable("ConnectionError: Connection refused")
        for name, series in self.answers.items():
            if promql == next(e for e in CATALOG if e.name == name).query("1m"):
                return [{"metric": labels, "value": [self.at, str(v)]} for labels, v in series]
        return []


def node(name: str, labels: dict[str, str] | None = None, **kw: Any) -> Node:
    cap = Resources(cpu=4, memory=2**30)
    return Node(id=f"s/{name}", name=name, site="s", site_kind=SiteKind.sim, tier="edge",
                capacity=cap, allocatable=cap, power=PowerProfile(idle_watts=10, max_watts=50),
                location="here", labels=labels or {}, **kw)


def site(**monitoring: Any) -> SiteSpec:
    return SiteSpec(name="s", kind=SiteKind.sim, location="here",
                    prometheus_url="http://prom.invalid:9090", monitoring=monitoring)


def collector(prom: FakeProm, clock: list[float], **kw: Any) -> Collector:
    return Collector(client=lambda url, timeout: prom, clock=lambda: clock[0], **kw)


def test_one_query_per_metric_per_refresh_whatever_the_node_count() -> None:
    prom = FakeProm({"cpu_utilisation": [({"instance": f"n{i}:9100"}, 0.1) for i in range(500)]})
    c = collector(prom, [T0])
    c.refresh([site()])
    assert len(prom.queries) == len(CATALOG) == len(set(prom.queries))
    nodes, health, _ = c.apply(site(), [node(f"n{i}") for i in range(500)], T0)
    assert health is None and all(n.utilisation == pytest.approx(0.1) for n in nodes)


@pytest.mark.parametrize("series_key, make_node, monitoring", [
    ("10.0.0.7:9100", lambda: node("gpu-1"), {"instances": {"gpu-1": "10.0.0.7:9100"}}),
    ("10.0.0.7:9100", lambda: node("gpu-1", {INSTANCE_LABEL: "10.0.0.7:9100"}), {}),
    ("gpu-1", lambda: node("gpu-1"), {}),
    ("gpu-1:9100", lambda: node("gpu-1"), {}),
    ("s/gpu-1", lambda: node("gpu-1"), {}),
])
def test_a_series_finds_its_node(series_key: str, make_node: Any,
                                 monitoring: dict[str, Any]) -> None:
    prom = FakeProm({"cpu_utilisation": [({"instance": series_key}, 0.42)],
                     "memory_utilisation": [({"instance": series_key}, 0.5)]})
    c = collector(prom, [T0])
    c.refresh([site(**monitoring)])
    (n,), health, _ = c.apply(site(**monitoring), [make_node()], T0 + 1)
    assert n.utilisation == pytest.approx(0.42) and n.memory_utilisation == pytest.approx(0.5)
    assert n.observed_at == datetime.fromtimestamp(T0, UTC)  # Prometheus's timestamp, kept
    assert n.metrics["cpu_utilisation"].source == "prometheus:node-exporter"
    assert health is None


@pytest.mark.parametrize("present, watts, source", [
    ({"rapl_power_watts": 30, "ipmi_power_watts": 80, "kepler_power_watts": 95}, 95, "kepler"),
    ({"rapl_power_watts": 30, "ipmi_power_watts": 80}, 80, "ipmi"),
    ({"rapl_power_watts": 30}, 30, "node-exporter"),
])
def test_the_best_power_source_wins(present: dict[str, float], watts: float,
                                    source: str) -> None:
    prom = FakeProm({m: [({"instance": "n1"}, v)] for m, v in present.items()})
    c = collector(prom, [T0])
    c.refresh([site()])
    (n,), _, _ = c.apply(site(), [node("n1")], T0)
    assert n.power_watts == watts and n.metrics["power_watts"].source == f"prometheus:{source}"
    assert set(present) <= set(n.metrics)


def test_node_exporter_utilisation_beats_slurm_and_nan_is_skipped() -> None:
    prom = FakeProm({"slurm_cpu_utilisation": [({"partition": "debug"}, 0.9)],
                     "cpu_utilisation": [({"instance": "debug"}, 0.2), ({"instance": "x"}, "NaN")],
                     "memory_utilisation": [({"instance": "x"}, "bogus")]})
    c = collector(prom, [T0])
    c.refresh([site()])
    (debug, x), _, _ = c.apply(site(), [node("debug"), node("x")], T0)
    assert debug.utilisation == pytest.approx(0.2)
    assert debug.metrics["slurm_cpu_utilisation"].value == pytest.approx(0.9)
    assert x.utilisation is None and x.memory_utilisation is None and not x.metrics


def test_stale_values_mark_the_node_and_degrade_the_site() -> None:
    prom = FakeProm({"cpu_utilisation": [({"instance": "n1"}, 0.3)]})
    clock = [T0]
    c = collector(prom, clock)
    c.refresh([site(staleAfter=10)])
    prom.answers = {}  # the exporter went away: no series any more
    clock[0] = T0 + 25
    c.refresh([site(staleAfter=10)])
    (n,), health, reason = c.apply(site(staleAfter=10), [node("n1")], clock[0])
    assert n.utilisation == pytest.approx(0.3) and n.metrics_stale
    assert n.metrics["cpu_utilisation"].stale
    assert health == SiteHealth.Degraded
    assert reason == "metrics stale on 1/1 nodes (n1: utilisation 25 s old, bound 10 s)"


def test_unreachable_prometheus_keeps_the_last_values_and_says_so() -> None:
    prom = FakeProm({"cpu_utilisation": [({"instance": "n1"}, 0.3)]})
    clock = [T0]
    c = collector(prom, clock)
    c.refresh([site()])
    prom.down, prom.queries = True, []
    clock[0] = T0 + 5
    c.refresh([site()])
    assert len(prom.queries) == 1  # the first failure ends the site's refresh
    (n,), health, reason = c.apply(site(), [node("n1")], clock[0])
    assert n.utilisation == pytest.approx(0.3) and not n.metrics_stale
    assert health == SiteHealth.Degraded
    assert reason.startswith("Prometheus at http://prom.invalid:9090 unreachable "
                             "(ConnectionError: Connection refused)")
    assert "last answer 5 s ago" in reason
    assert c.status("s")["error"].startswith("Prometheus at")  # type: ignore[index]


def test_series_matching_no_node_say_how_to_map_them() -> None:
    prom = FakeProm({"cpu_utilisation": [({"instance": "10.1.1.1:9100"}, 0.3)]})
    c = collector(prom, [T0])
    c.refresh([site()])
    _, health, reason = c.apply(site(), [node("n1")], T0)
    assert health == SiteHealth.Degraded and "monitoring.instances" in reason


def test_adapter_values_stay_where_prometheus_has_none() -> None:
    c = collector(FakeProm({}), [T0])
    c.refresh([site()])
    at = datetime.fromtimestamp(T0 - 100, UTC)
    (n,), _, _ = c.apply(site(), [node("n1", utilisation=0.6, power_watts=12.0,
                                       observed_at=at)], T0)
    assert n.utilisation == 0.6 and n.power_watts == 12.0 and n.observed_at == at
    assert n.metrics_stale  # 100 s > the default 30 s bound
    # with a Prometheus value for another field only, the adapter's CPU stays
    prom = FakeProm({"memory_utilisation": [({"instance": "n1"}, 0.5)]})
    c = collector(prom, [T0])
    c.refresh([site()])
    (n,), _, _ = c.apply(site(), [node("n1", utilisation=0.6, observed_at=at)], T0)
    assert n.utilisation == 0.6 and n.metrics_stale and "cpu_utilisation" not in n.metrics
    assert n.memory_utilisation == 0.5 and not n.metrics["memory_utilisation"].stale


def test_site_overrides_and_exporter_selection() -> None:
    entries = site_catalog(site(exporters=["node-exporter"],
                                queries={"rapl_power_watts": "", "cpu_utilisation": "x{}"}).monitoring)
    assert [e.name for e in entries] == ["cpu_utilisation", "memory_utilisation"]
    assert entries[0].promql == "x{}"


def test_probe_and_device_rtts_enter_the_topology_as_measured() -> None:
    prom = FakeProm({"probe_rtt_ms": [({"instance": "edge.example.org:443"}, 7.5)]})
    topo = TopologyModel()
    reading = DeviceReading(site="fleet", device="d1", location="floor", online=True, at=T0,
                            received_at=T0, cpu_utilisation=0.1, memory_used=1, memory_total=2,
                            load1=0.0, power_watts=3.0, power_source="model", rtt_ms=1.25,
                            peer_rtt_ms={"edge": 4.0})
    c = collector(prom, [T0], topology=topo, control_plane_location="dc",
                  devices=lambda: [reading])
    c.refresh([site(probes={"edge.example.org": "edge"})])
    assert topo.rtt_ms("here", "edge") == 7.5 and topo.source("here", "edge") == "measured"
    assert topo.rtt_ms("floor", "dc") == 1.25 and topo.observed_at("floor", "dc") == T0
    assert topo.rtt_ms("floor", "edge") == 4.0


def test_node_load_penalises_stale_values_and_falls_back_to_accounting() -> None:
    cap = Resources(cpu=4, memory=2**30)
    nodes = [node("fresh", utilisation=0.2), node("stale", utilisation=0.2, metrics_stale=True),
             node("unknown", free=Resources(cpu=1, memory=2**30)),
             node("hot", utilisation=1.0)]
    assert nodes[2].allocatable == cap
    u = effective_load(Snapshot(nodes=nodes, network=StaticNetwork()))
    assert np.allclose(u, [0.2, 0.2 + STALE_PENALTY * 0.8, 0.75, MAX_LOAD])


def test_measured_utilisation_without_a_power_meter_uses_the_power_model() -> None:
    prom = FakeProm({"cpu_utilisation": [({"instance": "n1"}, 0.25)]})
    c = collector(prom, [T0])
    c.refresh([site()])
    (n,), _, _ = c.apply(site(), [node("n1", power_watts=10.0,
                                       observed_at=datetime.fromtimestamp(T0, UTC))], T0)
    assert n.power_watts == 10 + (50 - 10) * 0.25  # idle + (max − idle)·u of the profile
    assert "power_watts" not in n.metrics  # the API shows its source as "model"


def test_a_hung_site_does_not_hold_up_the_others() -> None:
    import threading

    release = threading.Event()

    class Hung(FakeProm):
        def query(self, promql: str) -> list[dict[str, Any]]:
            release.wait(5)
            raise Unreachable("ReadTimeout: Read timed out")

    ok = FakeProm({"cpu_utilisation": [({"instance": "n1"}, 0.3)]})
    hung = Hung({})
    sites = [SiteSpec(name=name, kind=SiteKind.sim, prometheus_url=f"http://{name}.invalid")
             for name in ("good", "bad")]
    c = Collector(client=lambda url, timeout: hung if "bad" in url else ok, clock=lambda: T0)
    t = threading.Thread(target=c.refresh, args=(sites,))
    t.start()
    from tests.helpers import wait_for
    wait_for(lambda: c.status("good") and c.status("good")["series"] == 1, timeout=5,  # type: ignore[index]
             message="the good site refreshed while the bad one hangs")
    release.set()
    t.join(5)
    assert c.status("bad")["error"].endswith("(ReadTimeout: Read timed out)")  # type: ignore[index]


def test_sessions_of_changed_or_removed_sites_are_closed_and_dropped() -> None:
    made: list[tuple[str, float, FakeProm]] = []
    closed: list[str] = []

    class Closable(FakeProm):
        def __init__(self, url: str) -> None:
            super().__init__({"cpu_utilisation": [({"instance": "n1"}, 0.3)]})
            self.url = url

        def close(self) -> None:
            closed.append(self.url)

    def client(url: str, timeout: float) -> Closable:
        p = Closable(url)
        made.append((url, timeout, p))
        return p

    c = Collector(client=client, clock=lambda: T0)

    def spec(name: str, url: str, timeout: str = "2s") -> SiteSpec:
        return SiteSpec(name=name, kind=SiteKind.sim, prometheus_url=url,
                        monitoring={"timeout": timeout})

    c.refresh([spec("a", "http://a1.invalid"), spec("b", "http://b.invalid")])
    c.refresh([spec("a", "http://a1.invalid"), spec("b", "http://b.invalid")])
    assert [(u, t) for u, t, _ in made] == [("http://a1.invalid", 2.0), ("http://b.invalid", 2.0)]
    assert closed == []
    c.refresh([spec("a", "http://a2.invalid"), spec("b", "http://b.invalid", "5s")])  # changed
    assert sorted(closed) == ["http://a1.invalid", "http://b.invalid"]
    assert sorted(c._clients) == [("a", "http://a2.invalid", 2.0), ("b", "http://b.invalid", 5.0)]
    c.refresh([spec("b", "http://b.invalid", "5s")])  # a removed
    assert closed[-1] == "http://a2.invalid"
    assert list(c._clients) == [("b", "http://b.invalid", 5.0)]
    c.refresh([])
    assert c._clients == {} and len(closed) == 4 and len(made) == 4
