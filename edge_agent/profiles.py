"""Device profiles: the figures a device declares with ``--profile``.

A profile lets an ordinary Linux box stand in for a Raspberry Pi or a Jetson in a
testbed: the agent then announces the profile's cpus, memory, arch, power model and speed
with ``emulated: true`` in its Hello, so nobody mistakes declared figures for measured
ones. Without a profile the agent announces this host's own figures (:func:`host_profile`).

``speed`` is per-core speed relative to the reference core (1.0 = one core of a modern
x86-64 server, e.g. a 2020s Xeon/EPYC at ~3 GHz). The ARM figures below are an
assumption derived from published single-thread benchmark ratios (Cortex-A72 @ 1.5 GHz
and Cortex-A57 @ 1.43 GHz score roughly a third of a current server core in
Geekbench 5 / SPECint-style single-core tests); replace them with measurements of your
own workloads where you can.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

import psutil

from edge_agent.protocol import DevicePower

GiB = 2**30


@dataclass(frozen=True)
class DeviceProfile:
    """One device model. ``cpus`` in cores, ``memory`` in bytes, ``speed`` per core (ref 1.0)."""

    name: str
    cpus: float
    memory: int
    arch: str
    power: DevicePower
    speed: float
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    emulated: bool = True
    """True when the figures are declared (a profile), False when read from this host."""
    description: str = ""


PROFILES: dict[str, DeviceProfile] = {
    "pi4": DeviceProfile(
        name="pi4",
        description="Raspberry Pi 4 Model B (BCM2711, 4x Cortex-A72 @ 1.5 GHz, 4 GiB)",
        cpus=4,
        memory=4 * GiB,
        arch="aarch64",
        # Idle ≈2.7 W and full CPU load (stress) ≈6.4 W at the wall: Tom's Hardware,
        # "Raspberry Pi 4 Review" (2019) power measurements, consistent with RasPi.TV's
        # "How much power does Pi4B use?" (2019).
        power=DevicePower(
            idle_watts=2.7, max_watts=6.4,
            source="Tom's Hardware Raspberry Pi 4 review (2019) / RasPi.TV Pi4B power "
                   "measurements: idle 2.7 W, full CPU load 6.4 W",
        ),
        speed=0.35,  # assumption, see the module docstring
        labels={"board": "raspberry-pi-4"},
    ),
    "jetson-nano": DeviceProfile(
        name="jetson-nano",
        description="NVIDIA Jetson Nano (4x Cortex-A57 @ 1.43 GHz, 128-core Maxwell GPU, 4 GiB)",
        cpus=4,
        memory=4 * GiB,
        arch="aarch64",
        # NVIDIA Jetson Nano System-on-Module data sheet (DA-09366-001): two power
        # modes, 5 W (2 cores, capped clocks) and 10 W (MAXN, 4 cores); the linear model
        # spans the 5 W budget to the 10 W budget.
        power=DevicePower(
            idle_watts=5.0, max_watts=10.0,
            source="NVIDIA Jetson Nano module data sheet DA-09366-001: 5 W and 10 W (MAXN) "
                   "power modes",
        ),
        speed=0.4,  # assumption, see the module docstring
        gpus=1,
        labels={"accelerator": "nvidia-maxwell", "board": "jetson-nano"},
    ),
}

# A conservative default for an unknown host: 10 W idle plus 10 W per busy core. Rough
# figures for small x86 servers/desktops (SPECpower_ssj2008 results show idle ~10-60 W
# and ~5-15 W per loaded core); the source string says it is a default, not a measurement.
_HOST_IDLE_W = 10.0
_HOST_W_PER_CORE = 10.0


def host_profile() -> DeviceProfile:
    """This machine's real cpus, memory and arch (psutil/platform); power from a default."""
    cpus = psutil.cpu_count(logical=True) or 1
    return DeviceProfile(
        name="host",
        description=f"this host ({platform.node()})",
        cpus=cpus,
        memory=psutil.virtual_memory().total,
        arch=platform.machine() or "unknown",
        power=DevicePower(
            idle_watts=_HOST_IDLE_W,
            max_watts=_HOST_IDLE_W + _HOST_W_PER_CORE * cpus,
            source="default, not measured: 10 W idle + 10 W per core (order of magnitude "
                   "of SPECpower_ssj2008 results); give a profile or measure to improve",
        ),
        speed=1.0,
        emulated=False,
    )


def get_profile(name: str | None) -> DeviceProfile:
    """The profile called ``name``; ``None`` or ``"host"`` is :func:`host_profile`.

    Raises:
        ValueError: no such profile (the message lists the known ones).
    """
    if name is None or name == "host":
        return host_profile()
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(["host", *sorted(PROFILES)])
        raise ValueError(f"unknown device profile {name!r}; known profiles: {known}") from None
