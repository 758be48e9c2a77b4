"""Number formatting for placement explanations (people read these)."""

from __future__ import annotations

from continuum.units import format_bytes, format_duration


def cpu(x: float) -> str:
    """Cores without a trailing '.0': 64, 0.5, 2.25."""
    return f"{x:g}"


def mem(x: float) -> str:
    """Bytes with a binary suffix: 512Mi, 1.5Gi."""
    return format_bytes(x)


def seconds(x: float) -> str:
    """A duration: 850ms, 3.2s, 2m05s."""
    return format_duration(x)


def ms(x: float) -> str:
    """Milliseconds with sensible precision: 0.5 ms, 2.1 ms, 38 ms."""
    return f"{x:.2g} ms" if x < 10 else f"{x:.0f} ms"


def joules(x: float) -> str:
    """Energy: 41 J, 3.2 kJ, 1.1 MJ."""
    for unit, scale in (("MJ", 1e6), ("kJ", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} J"
