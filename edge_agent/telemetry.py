"""Telemetry: CPU, memory, load and modelled power of this device.

Power comes from the linear idle→max model of Fan, Weber & Barroso, "Power provisioning
for a warehouse-sized computer", ISCA 2007: ``P = P_idle + (P_max − P_idle) · u`` with
``u`` the CPU busy fraction (0..1). It is reported with ``power_source = "model"``.
"""

from __future__ import annotations

import os
import time

import psutil

from continuum.model import PowerProfile
from edge_agent.profiles import DeviceProfile
from edge_agent.protocol import Telemetry


def model_power(power: PowerProfile, utilisation: float) -> float:
    """Watts drawn at CPU busy fraction ``utilisation`` (clamped to 0..1), linear model.

    Source: Fan, Weber & Barroso, ISCA 2007 (see the module docstring).
    """
    u = min(1.0, max(0.0, utilisation))
    return power.idle_watts + (power.max_watts - power.idle_watts) * u


class TelemetrySampler:
    """Samples this host with psutil and builds :class:`Telemetry` for ``device_id``.

    CPU percent is measured since the previous sample (psutil's non-blocking mode), so
    the first sample after start covers the time since construction.
    """

    def __init__(self, device_id: str, profile: DeviceProfile) -> None:
        self.device_id = device_id
        self.profile = profile
        psutil.cpu_percent(interval=None)  # prime the counter
        self._last = time.monotonic()

    def sample(self, running: int = 0, rtt_ms: float | None = None) -> Telemetry:
        """One Telemetry message; ``running`` is the number of runs executing now."""
        cpu = psutil.cpu_percent(interval=None)
        mem = psutil.virtual_memory()
        try:
            load1 = os.getloadavg()[0]
        except OSError:  # pragma: no cover - not on Linux
            load1 = 0.0
        total = self.profile.memory if self.profile.emulated else mem.total
        return Telemetry(
            device_id=self.device_id,
            cpu_percent=cpu,
            memory_used=min(mem.used, total),
            memory_total=total,
            load1=load1,
            power_watts=round(model_power(self.profile.power, cpu / 100.0), 3),
            power_source="model",
            running=running,
            rtt_ms=rtt_ms,
        )
