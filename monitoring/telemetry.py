"""Device telemetry as monitoring sees it: one :class:`DeviceReading` per device.

The control plane builds these from the devices adapter's latest ``Telemetry`` (the
agents' MQTT messages); the collector feeds their RTTs into the topology and
:class:`~monitoring.metrics.DeviceTelemetryCollector` re-exports them on ``/metrics``
with device labels. Monitoring never imports the adapter or the agent protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceReading:
    """The latest telemetry of one device.

    Units: ``at`` and ``received_at`` Unix s; ``cpu_utilisation`` 0..1; memory bytes;
    ``power_watts`` W (``power_source`` "model", "rapl" or "ina219"); ``rtt_ms`` the
    agent's measured round trip to its broker (ms), which sits beside the control
    plane; ``peer_rtt_ms`` location name → measured round trip (ms).
    """

    site: str
    device: str
    location: str
    online: bool
    at: float
    received_at: float
    cpu_utilisation: float
    memory_used: int
    memory_total: int
    load1: float
    power_watts: float
    power_source: str
    running: int = 0
    rtt_ms: float | None = None
    peer_rtt_ms: dict[str, float] = field(default_factory=dict)
    temperature_c: float | None = None
