"""The network as placement sees it: RTT (ms) and bandwidth (bit/s) between locations.

Placement asks only per (location, location) pair, and the :class:`Snapshot` caches the
answers per cycle, so an implementation may be as slow as a dictionary lookup plus a
little arithmetic. ``monitoring.topology.TopologyModel`` implements :class:`Network`
structurally (it does not import placement); :class:`StaticNetwork` is a small table
for tests, benchmarks and what-if previews.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

LOCAL_RTT_MS = 0.5
"""RTT within one location (ms): a switched LAN / one data-centre hall."""
LAN_BANDWIDTH_BPS = 10e9
"""Bandwidth within one location (bit/s): 10 GbE, the common server NIC."""
UNKNOWN_RTT_MS = 50.0
"""Conservative RTT (ms) for a pair nothing is known about: a continental WAN path."""
UNKNOWN_BANDWIDTH_BPS = 50e6
"""Conservative bandwidth (bit/s) for a pair nothing is known about: a modest WAN uplink."""


@runtime_checkable
class Network(Protocol):
    """RTT and bandwidth between two location names; symmetric; never raises.

    An unknown name gets a conservative default, not an error: placement must be able
    to score every node even while the topology is still being learned.
    """

    def rtt_ms(self, a: str, b: str) -> float:
        """Round-trip time between ``a`` and ``b`` in milliseconds (same location: small)."""
        ...

    def bandwidth_bps(self, a: str, b: str) -> float:
        """Achievable bandwidth between ``a`` and ``b`` in bit/s (same location: LAN)."""
        ...


@dataclass
class StaticNetwork:
    """A fixed table of links; same location → LAN; any other pair → the defaults.

    ``links`` maps an (a, b) pair, in either order, to ``(rtt_ms, bandwidth_bps)``.
    """

    links: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    default_rtt_ms: float = UNKNOWN_RTT_MS
    default_bandwidth_bps: float = UNKNOWN_BANDWIDTH_BPS
    local_rtt_ms: float = LOCAL_RTT_MS
    local_bandwidth_bps: float = LAN_BANDWIDTH_BPS

    def add(self, a: str, b: str, rtt_ms: float, bandwidth_bps: float) -> StaticNetwork:
        """Set the link between ``a`` and ``b`` (both directions); returns self for chaining."""
        self.links[(a, b)] = (rtt_ms, bandwidth_bps)
        return self

    def _link(self, a: str, b: str) -> tuple[float, float] | None:
        return self.links.get((a, b)) or self.links.get((b, a))

    def rtt_ms(self, a: str, b: str) -> float:
        if a == b:
            return self.local_rtt_ms
        link = self._link(a, b)
        return link[0] if link else self.default_rtt_ms

    def bandwidth_bps(self, a: str, b: str) -> float:
        if a == b:
            return self.local_bandwidth_bps
        link = self._link(a, b)
        return link[1] if link else self.default_bandwidth_bps
