"""The latency topology: RTT (ms) and bandwidth (bit/s) between named locations.

:class:`TopologyModel` satisfies ``placement.network.Network`` structurally
(``rtt_ms(a, b)``, ``bandwidth_bps(a, b)``). For a pair it answers, in order of trust:

1. **measured** — the latest :meth:`TopologyModel.observe` (probes, device pings);
2. **configured** — a :class:`~continuum.model.Link` from the federation's ``Topology``;
3. **modelled** — from the locations' coordinates:
   ``RTT_ms = 2 · d_km / FIBRE_KM_PER_MS · ROUTE_INFLATION + PATH_OVERHEAD_MS``, with
   ``d_km`` the great-circle (haversine) distance, light in fibre at ≈ 2/3 c ≈
   200 km/ms, and a route-inflation factor for paths longer than the geodesic (Singla,
   Chandrasekaran, Godfrey & Maggs, "The Internet at the Speed of Light", HotNets 2014:
   median ping RTT ≈ 3.1× the c-latency, i.e. ≈ 1.5–2× the fibre-speed geodesic RTT).
   We take 1.5 plus a fixed 2 ms per path (switching, last hops), which reproduces
   Munich–Frankfurt ≈ 7 ms and Frankfurt–Ashburn ≈ 100 ms better than 2.0 alone, whose
   long-haul figures come out ~40 % high. Bandwidth is modelled by class: same
   location → LAN, same zone → metro/campus, otherwise WAN;
4. **default** — a location without coordinates (and no link, not in the same zone)
   gets the conservative :data:`UNKNOWN_RTT_MS` / :data:`UNKNOWN_BANDWIDTH_BPS`.

Links are symmetric. Lookups are dictionary hits after the first modelled computation
of a pair (cached); :meth:`rtt_matrix` returns a whole matrix for vector use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from continuum.model import Link, Location, Topology

EARTH_RADIUS_KM = 6371.0
"""Mean Earth radius (km), IUGG."""
FIBRE_KM_PER_MS = 200.0
"""Signal speed in optical fibre (km/ms): refractive index ≈ 1.47 → ≈ 2/3 c."""
ROUTE_INFLATION = 1.5
"""Real path over fibre-speed geodesic (Singla et al., HotNets 2014: ≈ 1.5–2)."""
PATH_OVERHEAD_MS = 2.0
"""Fixed per-path RTT (ms) for switching, queuing and the last hops at both ends."""
LOCAL_RTT_MS = 0.5
"""RTT (ms) within one location (same LAN / data-centre hall)."""
LAN_BANDWIDTH_BPS = 10e9
"""Bandwidth (bit/s) within one location: 10 GbE."""
ZONE_RTT_MS = 5.0
"""RTT (ms) between locations of one zone when coordinates are missing (metro/campus)."""
ZONE_BANDWIDTH_BPS = 1e9
"""Bandwidth (bit/s) between locations of one zone: a 1 Gbit/s metro/campus link."""
WAN_BANDWIDTH_BPS = 100e6
"""Bandwidth (bit/s) modelled between locations in different zones: 100 Mbit/s WAN share."""
UNKNOWN_RTT_MS = 50.0
"""Conservative RTT (ms) when nothing is known about a pair: a continental WAN path."""
UNKNOWN_BANDWIDTH_BPS = 50e6
"""Conservative bandwidth (bit/s) when nothing is known: a modest WAN uplink."""


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (km) between two points given in degrees (haversine formula)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def modelled_rtt_ms(distance_km: float) -> float:
    """``2 · d / 200 km/ms · ROUTE_INFLATION + PATH_OVERHEAD_MS`` (see module docstring)."""
    return 2.0 * distance_km / FIBRE_KM_PER_MS * ROUTE_INFLATION + PATH_OVERHEAD_MS


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass
class _Entry:
    rtt_ms: float
    bandwidth_bps: float
    source: str
    observed_at: float | None = None


class TopologyModel:
    """RTT/bandwidth between locations: measured > configured > modelled > default.

    Args:
        topology: the federation's locations (with lat/lon and zone) and configured links.
    """

    def __init__(self, topology: Topology | None = None) -> None:
        self._locations: dict[str, Location] = {}
        self._configured: dict[tuple[str, str], _Entry] = {}
        self._measured: dict[tuple[str, str], _Entry] = {}
        self._modelled: dict[tuple[str, str], _Entry] = {}
        self.version = 0
        """Grows with every update (:meth:`add_location`, :meth:`configure`,
        :meth:`observe`): equal values mean every pair answers as before, so a caller may
        keep RTTs and bandwidths it read (the applier's snapshot cache)."""
        if topology is not None:
            for loc in topology.locations:
                self.add_location(loc)
            for link in topology.links:
                self.configure(link)

    # ---------------------------------------------------------------- updates

    def add_location(self, location: Location) -> None:
        """Add or replace a location (its coordinates feed the modelled RTTs)."""
        self._locations[location.name] = location
        self._modelled.clear()
        self.version += 1

    def configure(self, link: Link) -> None:
        """Set a configured link (used where no measurement exists)."""
        self._configured[_pair(link.a, link.b)] = _Entry(
            link.rtt_ms, link.bandwidth_bps, "configured"
        )
        self.version += 1

    def observe(self, a: str, b: str, rtt_ms: float, bandwidth_bps: float | None = None,
                at: float | None = None) -> None:
        """Record a measured RTT (ms) and optionally bandwidth (bit/s) between ``a`` and ``b``.

        The latest measurement wins. Without ``bandwidth_bps`` the previous measured,
        configured or modelled bandwidth is kept. ``at`` is the measurement time (Unix s).

        Raises:
            ValueError: a negative RTT or a non-positive bandwidth.
        """
        if not rtt_ms >= 0:
            raise ValueError(f"rtt_ms {rtt_ms!r} must be >= 0")
        if bandwidth_bps is not None and not bandwidth_bps > 0:
            raise ValueError(f"bandwidth_bps {bandwidth_bps!r} must be > 0")
        bw = bandwidth_bps if bandwidth_bps is not None else self.bandwidth_bps(a, b)
        self._measured[_pair(a, b)] = _Entry(rtt_ms, bw, "measured", at)
        self.version += 1

    # ---------------------------------------------------------------- lookups

    def _entry(self, a: str, b: str) -> _Entry:
        key = _pair(a, b)
        entry = self._measured.get(key) or self._configured.get(key)
        if entry is not None:
            return entry
        entry = self._modelled.get(key)
        if entry is None:
            entry = self._model(a, b)
            self._modelled[key] = entry
        return entry

    def _model(self, a: str, b: str) -> _Entry:
        if a == b:
            return _Entry(LOCAL_RTT_MS, LAN_BANDWIDTH_BPS, "modelled")
        la, lb = self._locations.get(a), self._locations.get(b)
        if la is None or lb is None:
            return _Entry(UNKNOWN_RTT_MS, UNKNOWN_BANDWIDTH_BPS, "modelled")
        same_zone = la.zone is not None and la.zone == lb.zone
        bw = ZONE_BANDWIDTH_BPS if same_zone else WAN_BANDWIDTH_BPS
        if None not in (la.lat, la.lon, lb.lat, lb.lon):
            d = haversine_km(la.lat, la.lon, lb.lat, lb.lon)  # type: ignore[arg-type]
            return _Entry(modelled_rtt_ms(d), bw, "modelled")
        if same_zone:
            return _Entry(ZONE_RTT_MS, bw, "modelled")
        return _Entry(UNKNOWN_RTT_MS, UNKNOWN_BANDWIDTH_BPS, "modelled")

    def rtt_ms(self, a: str, b: str) -> float:
        """RTT (ms) between locations ``a`` and ``b``; never raises (unknown → default)."""
        return self._entry(a, b).rtt_ms

    def bandwidth_bps(self, a: str, b: str) -> float:
        """Bandwidth (bit/s) between ``a`` and ``b``; never raises (unknown → default)."""
        return self._entry(a, b).bandwidth_bps

    def observed_at(self, a: str, b: str) -> float | None:
        """When the pair was last measured (Unix s), or None if it never was."""
        e = self._measured.get(_pair(a, b))
        return e.observed_at if e is not None else None

    def source(self, a: str, b: str) -> str:
        """Where the pair's figures come from: "measured", "configured" or "modelled"."""
        return self._entry(a, b).source

    def link(self, a: str, b: str) -> Link:
        """The pair as a :class:`~continuum.model.Link`."""
        e = self._entry(a, b)
        return Link(a=a, b=b, rtt_ms=e.rtt_ms, bandwidth_bps=e.bandwidth_bps,
                    source=e.source)  # type: ignore[arg-type]

    def names(self) -> list[str]:
        """Every location name known: declared locations and both ends of every link."""
        names = set(self._locations)
        for a, b in (*self._configured, *self._measured):
            names.update((a, b))
        return sorted(names)

    def links(self) -> list[Link]:
        """Every unordered pair of distinct known locations with its source (GET /v1/topology)."""
        names = self.names()
        return [self.link(a, b) for i, a in enumerate(names) for b in names[i + 1:]]

    def rtt_matrix(self, names: Iterable[str]) -> np.ndarray:
        """RTT (ms) matrix over ``names`` (row a, column b), for vectorised consumers."""
        names = list(names)
        return np.array([[self.rtt_ms(a, b) for b in names] for a in names], dtype=np.float64)
