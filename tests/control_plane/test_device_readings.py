"""``control_plane.server.device_readings``: the control plane's device readings for
``/metrics`` and the collector, reused for devices whose telemetry did not change."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from adapters.capabilities import DeviceTelemetry
from control_plane.server import device_readings
from edge_agent.protocol.v1 import Telemetry
from monitoring.telemetry import DeviceReading

AT = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def entry(k: int, cpu: float = 25.0, **kw: object) -> DeviceTelemetry:
    t = Telemetry(device_id=f"d{k}", at=AT, cpu_percent=cpu, memory_used=2**30,
                  memory_total=2**32, load1=0.5, power_watts=3.5, rtt_ms=2.0,
                  peer_rtt_ms={"edge": 4.0})
    base = DeviceTelemetry(device_id=f"d{k}", location="dc", online=True,
                           received_at=AT.timestamp() + 0.1, telemetry=t)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_readings_say_what_the_telemetry_says() -> None:
    [r] = device_readings("fleet", [entry(1, cpu=150.0)], {}, {})
    assert r == DeviceReading(
        site="fleet", device="d1", location="dc", online=True, at=AT.timestamp(),
        received_at=AT.timestamp() + 0.1, cpu_utilisation=1.0, memory_used=2**30,
        memory_total=2**32, load1=0.5, power_watts=3.5, power_source="model",
        running=0, rtt_ms=2.0, peer_rtt_ms={"edge": 4.0}, temperature_c=None)


def test_an_unchanged_device_keeps_its_reading_object() -> None:
    fleet = [entry(k) for k in range(4)]
    first: dict = {}
    a = device_readings("fleet", fleet, {}, first)
    fleet2 = [replace(e) for e in fleet]  # the adapter builds new entries every call
    fleet2[1] = entry(1, cpu=75.0)  # a new Telemetry payload
    fleet2[2] = replace(fleet2[2], online=False)
    fleet2[3] = replace(fleet2[3], received_at=fleet2[3].received_at + 1)
    second: dict = {}
    b = device_readings("fleet", fleet2, first, second)
    assert b[0] is a[0]
    assert b[1].cpu_utilisation == 0.75 and b[1] is not a[1]
    assert b[2].online is False and b[3].received_at == a[3].received_at + 1
    assert set(second) == {("fleet", f"d{k}") for k in range(4)}
    # another site's device of the same id is not taken for this one
    [c] = device_readings("other", fleet2[:1], second, {})
    assert c.site == "other" and c is not b[0]
