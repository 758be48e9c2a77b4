"""The devices' families on ``/metrics`` (:class:`DeviceTelemetryCollector`).

Aspects: the cached text exposition says exactly what prometheus-client writes from the
same readings (escaping included) and parses as one family each; a scrape re-renders
only the devices whose reading changed and drops the ones gone; the fleet-wide families
(devices by state, telemetry age quantiles) are always there, the per-device ones only up
to ``per_device_limit`` devices.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import replace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from monitoring.metrics import (
    _DEVICE_FAMILIES,
    ControlPlaneMetrics,
    DeviceTelemetryCollector,
    _Families,
    _go,
)
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


def _reference_render(d: DeviceReading) -> tuple[str, ...]:
    """The per-device lines as the collector rendered them before the fast path (c8ebce6):
    prometheus-client's ``floatToGoString`` per value, labels joined per line."""
    lines = [""] * len(_DEVICE_FAMILIES)
    lab = (f'site="{_escape_reference(d.site)}",device="{_escape_reference(d.device)}",'
           f'location="{_escape_reference(d.location)}"')
    for i, labels, value in DeviceTelemetryCollector._samples(d):
        name, _, extra = _DEVICE_FAMILIES[i]
        more = "".join(f',{k}="{_escape_reference(v)}"'
                       for k, v in zip(extra, labels[3:], strict=True))
        lines[i] += f"{name}{{{lab}{more}}} {floatToGoString(value)}\n"
    return tuple(lines)


def _escape_reference(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _odd_floats(rng: random.Random) -> list[float]:
    """Floats of every kind ``floatToGoString`` treats apart: specials, signed zeros,
    integral values around Go's switch to exponents (1e6, 1e7), Python's (1e16), tiny and
    huge exponents, random bit patterns (subnormals included)."""
    out = [math.inf, -math.inf, math.nan, 0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308,
           -1.7976931348623157e308, 2.2250738585072014e-308, 0.1, 1 / 3, 1e21, 1e22, 1e-7]
    for e in range(-30, 30):
        for m in (1.0, 1.5, 9.999999, 1.2345678912345, 7.0):
            out += [m * 10.0**e, -m * 10.0**e]
    for n in (999_999, 1_000_000, 1_000_001, 1_234_567, 9_999_999, 10_000_000, 2**30, 2**31,
              2**53, 2**53 + 1, 10**15, 10**16, 10**16 + 2, 1_764_633_600, 4 * 2**30):
        out += [float(n), float(-n), n + 0.5, n + 0.25, n - 0.001]
    out += [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            for _ in range(20_000)]
    out += [rng.uniform(-1e9, 1e9) for _ in range(5_000)]
    out += [rng.randrange(0, 2**40) / rng.choice((1, 10, 1000, 1024)) for _ in range(5_000)]
    return out


def test_fast_float_format_equals_floatToGoString() -> None:
    vals: list[float | int | bool] = [*_odd_floats(random.Random(7)), 0, 1, -3, 2**30,
                                      10**25, True, False]
    for v in vals:
        assert _go(v) == floatToGoString(v), v


def test_rendering_is_byte_identical_to_the_reference_for_varied_readings() -> None:
    rng = random.Random(11)
    floats = _odd_floats(rng)
    names = ["dc", "lab \\ 2", 'we"ird', "new\nline", "ünï", "", "a,b=c}{"]
    fleet = []
    for i in range(3_000):
        fleet.append(DeviceReading(
            site=rng.choice(names), device=f"{rng.choice(names)}-{i}",
            location=rng.choice(names), online=rng.random() < 0.8,
            at=rng.choice(floats), received_at=rng.choice(floats),
            cpu_utilisation=rng.choice(floats), memory_used=rng.randrange(-1, 2**44),
            memory_total=rng.choice((4 * 2**30, 0, 10**17, 123)), load1=rng.choice(floats),
            power_watts=rng.choice((*floats[:40], 3, rng.choice(floats))),
            power_source=rng.choice(["model", "rapl", 'in"a\\219']),
            running=rng.randrange(0, 10**8), rtt_ms=rng.choice((None, rng.choice(floats))),
            peer_rtt_ms={rng.choice(names): rng.choice(floats)
                         for _ in range(rng.randrange(0, 4))},
            temperature_c=rng.choice((None, rng.choice(floats)))))
    coll = DeviceTelemetryCollector(lambda: fleet, clock=lambda: NOW)
    for d in fleet:
        assert coll._render(d) == _reference_render(d), d
    # and so the exposition: the fleet-wide families, then each family's lines in order
    head = generate_latest(_Families(list(coll._fleet(fleet))))
    want = b"".join([head] + [
        (f"# HELP {name} {doc}\n# TYPE {name} gauge\n"
         + "".join(_reference_render(d)[i] for d in fleet)).encode()
        for i, (name, doc, _) in enumerate(_DEVICE_FAMILIES)])
    assert coll.exposition() == want
