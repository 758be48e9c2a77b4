"""The devices' families on ``/metrics`` (:class:`DeviceTelemetryCollector`).

Aspects: the cached text exposition says exactly what prometheus-client writes from the
same readings (escaping included) and parses as one family each; a scrape re-renders
only the devices whose reading changed and drops the ones gone; the fleet-wide families
(devices by state, telemetry age quantiles) are always there, the per-device ones only up
to ``per_device_limit`` devices.
"""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import ControlPlaneMetrics, DeviceTelemetryCollector
from monitoring.telemetry import DeviceReading

NOW = 1_700_000_100.0


def reading(i: int, **kw: object) -> DeviceReading:
    base = DeviceReading(site="fleet", device=f"dev-{i}", location="dc", online=True,
                         at=NOW - i, received_at=NOW - i, cpu_utilisation=0.25,
                         memory_used=2**30, memory_total=4 * 2**30, load1=0.5,
                         power_watts=3.5, power_source="model")
    return replace(base, **kw)  # type: ignore[arg-type]


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_cached_exposition_says_what_prometheus_client_writes() -> None:
    fleet = [reading(0, rtt_ms=12.5, temperature_c=41.0, peer_rtt_ms={"edge": 3.0, "dc": 1.0}),
             reading(1, online=False, device='we"ird\\dev\nice', location="lab \\ 2"),
             reading(2, site="other", power_source="rapl", running=2)]
    coll = DeviceTelemetryCollector(lambda: fleet, clock=lambda: NOW)
    mine = coll.exposition()
    assert samples(mine) == samples(generate_latest(coll))  # type: ignore[arg-type]
    got = samples(mine)
    assert got[("continuum_device_peer_rtt_seconds", (
        ("device", "dev-0"), ("location", "dc"), ("peer", "edge"), ("site", "fleet")))] == 0.003
    assert got[("continuum_device_up", (("device", 'we"ird\\dev\nice'),
                                        ("location", "lab \\ 2"), ("site", "fleet")))] == 0.0
    assert not any(n == "continuum_device_rtt_seconds" and dict(lab)["device"] == "dev-1"
                   for n, lab in got)  # no RTT measured: no series


def test_control_plane_metrics_parse_with_one_family_each() -> None:
    fleet = [reading(i) for i in range(5)]
    text = ControlPlaneMetrics(devices=lambda: fleet).exposition().decode()
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    assert "continuum_device_telemetry_timestamp_seconds" in names
    assert "continuum_placements" in names  # the registry's families are still there
    assert text.count("continuum_device_telemetry_timestamp_seconds{") == 5


def test_a_scrape_re_renders_only_changed_devices() -> None:
    fleet = [reading(i) for i in range(100)]
    coll = DeviceTelemetryCollector(lambda: fleet, clock=lambda: NOW)
    coll.exposition()
    assert coll.rendered == 100
    coll.exposition()
    assert coll.rendered == 100  # nothing changed: nothing re-rendered
    fleet[7] = reading(7, at=NOW + 1, cpu_utilisation=0.75)
    del fleet[50]
    got = samples(coll.exposition())
    assert coll.rendered == 101
    lab = (("device", "dev-7"), ("location", "dc"), ("site", "fleet"))
    assert got[("continuum_device_telemetry_timestamp_seconds", lab)] == NOW + 1
    assert got[("continuum_device_cpu_utilisation_ratio", lab)] == 0.75
    assert not any(dict(lab).get("device") == "dev-50" for _, lab in got)


def test_fleet_wide_families_always_per_device_only_up_to_the_limit() -> None:
    fleet = [reading(i, online=i % 4 != 0) for i in range(100)]  # ages 0..99 s
    for limit, per_device in ((100, True), (99, False)):
        coll = DeviceTelemetryCollector(lambda: fleet, per_device_limit=limit,
                                        clock=lambda: NOW)
        for text in (coll.exposition(), generate_latest(coll)):  # type: ignore[arg-type]
            got = samples(text)
            assert got[("continuum_devices", (("site", "fleet"), ("state", "online")))] == 75
            assert got[("continuum_devices", (("site", "fleet"), ("state", "offline")))] == 25
            age = {dict(lab)["quantile"]: v for (n, lab), v in got.items()
                   if n == "continuum_device_telemetry_age_seconds"}
            assert age == {"0.5": 49.0, "0.9": 89.0, "0.99": 98.0, "1.0": 99.0}
            assert any(n == "continuum_device_up" for n, _ in got) is per_device
