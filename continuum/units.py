"""Kubernetes-style quantities and durations.

Accepted forms follow the Kubernetes resource model
(https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/):
CPU as cores (``2``, ``0.5``) or millicores (``500m``); bytes as plain integers or with
a decimal (``k``, ``M``, ``G``, ``T``, ``P``, ``E``) or binary (``Ki``, ``Mi``, ``Gi``,
``Ti``, ``Pi``, ``Ei``) suffix; durations as seconds (``30``) or Go-style unit runs
(``500ms``, ``30s``, ``5m``, ``2h``, ``1h30m``, ``1d``).

Every parser raises :class:`ValueError` whose message states the accepted forms, so a
pydantic model that uses them yields a 422 that says how to fix the value.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_BYTE_SUFFIX = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _finite_non_negative(x: float, what: str, raw: object) -> float:
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{what} {raw!r} must be a finite number >= 0")
    return x


def parse_cpu(value: object) -> float:
    """Parse a CPU quantity to cores (float).

    ``"500m"`` → 0.5, ``"2"`` → 2.0, ``1.5`` → 1.5.

    Raises:
        ValueError: the value is not a non-negative number of cores or millicores.
    """
    if isinstance(value, bool):
        raise ValueError(f"cpu {value!r} is not a quantity; use cores like 2 or 0.5, or millicores like 500m")
    if isinstance(value, int | float):
        return _finite_non_negative(float(value), "cpu", value)
    m = _QUANTITY.match(str(value))
    if not m or m.group(2) not in ("", "m"):
        raise ValueError(
            f"cpu {value!r} is not a quantity; use cores like 2 or 0.5, or millicores like 500m"
        )
    cores = float(m.group(1)) / (1000.0 if m.group(2) == "m" else 1.0)
    return _finite_non_negative(cores, "cpu", value)


def parse_bytes(value: object) -> int:
    """Parse a memory or size quantity to bytes (int).

    ``"512Mi"`` → 536870912, ``"2G"`` → 2000000000, ``1024`` → 1024.

    Raises:
        ValueError: unknown suffix or not a non-negative number.
    """
    if isinstance(value, bool):
        raise ValueError(
            f"size {value!r} is not a quantity; use bytes like 1024, 512Mi or 2Gi")
    if isinstance(value, int | float):
        return int(_finite_non_negative(float(value), "size", value))
    m = _QUANTITY.match(str(value))
    if not m or m.group(2) not in _BYTE_SUFFIX:
        raise ValueError(
            f"size {value!r} is not a quantity; use bytes like 1024, or a suffix "
            "k/M/G/T (powers of 1000) or Ki/Mi/Gi/Ti (powers of 1024), e.g. 512Mi or 2Gi"
        )
    return int(_finite_non_negative(float(m.group(1)) * _BYTE_SUFFIX[m.group(2)], "size", value))


def parse_duration(value: object) -> float:
    """Parse a duration to seconds (float).

    ``"30s"`` → 30.0, ``"2h"`` → 7200.0, ``"1h30m"`` → 5400.0, ``45`` → 45.0.

    Raises:
        ValueError: not a number of seconds nor a run of ``<number><ms|s|m|h|d>`` parts.
    """
    if isinstance(value, bool):
        raise ValueError(
            f"duration {value!r} is not valid; use seconds like 45 or units like 30s, 5m, 2h, 1h30m")
    if isinstance(value, int | float):
        return _finite_non_negative(float(value), "duration", value)
    text = str(value).strip()
    try:
        return _finite_non_negative(float(text), "duration", value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(
            f"duration {value!r} is not valid; use seconds like 45 or units like 30s, 5m, 2h, 1h30m"
        )
    return sum(float(n) * _DURATION_UNIT[u] for n, u in parts)


def format_bytes(n: float) -> str:
    """Render bytes with a binary suffix for people (``1.5Gi``)."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        scale = _BYTE_SUFFIX[suffix]
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{int(n)}"


def format_duration(seconds: float) -> str:
    """Render seconds for people (``1h02m``, ``3.2s``, ``850ms``)."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


Cores = Annotated[float, BeforeValidator(parse_cpu)]
"""CPU in cores; accepts ``500m`` and ``2``."""
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
"""A size in bytes; accepts ``512Mi``, ``2Gi``, ``1G``."""
Seconds = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(float)]
"""A duration in seconds; accepts ``30s``, ``2h``, ``1h30m``."""
