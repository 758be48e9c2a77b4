"""SloLatency: RTT from the node to the task's SLO target.

Filter: a task with ``slo`` may only run where ``RTT(node location, target) ≤
slo.latency_ms``; the target may be a location, a node id or name, or a site (resolved
by :meth:`placement.snapshot.Snapshot.resolve_location`). Score (term ``latency``):
lower RTT is better; a task without an SLO scores every node equally (neutral).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from placement import fmt
from placement.framework import FilterResult, Rejection, Term
from placement.predict import CycleState, predictions

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "SloLatency"
REASON_SLO = "too far from the SLO target"


class SloLatency:
    """Filter and score on RTT (ms) to ``task.slo.target``."""

    name = NAME
    term: Term = "latency"
    lower_is_better = True
    floor = 1.0
    """ms: RTT differences well below a millisecond do not matter."""

    def filter(self, req: PlacementRequest, snap: Snapshot, state: CycleState) -> FilterResult:
        slo = req.task.slo
        if slo is None:
            return FilterResult(np.ones(snap.n, dtype=bool))
        rtt = predictions(req, snap, state).rtt_ms
        assert rtt is not None
        rej = Rejection(
            REASON_SLO, rtt > slo.latency_ms,
            lambda att: f"best RTT {fmt.ms(float(rtt[att].min()))} to {slo.target} "
                        f"> SLO {fmt.ms(slo.latency_ms)}",
            f"raise slo.latencyMs above {fmt.ms(slo.latency_ms)} or add nodes near {slo.target}",
        )
        return FilterResult.from_rejections(snap.n, [rej])

    def score(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
              mask: np.ndarray) -> np.ndarray:
        rtt = predictions(req, snap, state).rtt_ms
        return np.zeros(snap.n) if rtt is None else rtt

    def describe(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
                 raw: np.ndarray, chosen: int, mask: np.ndarray) -> str | None:
        slo = req.task.slo
        if slo is None:
            return None
        return (f"RTT {fmt.ms(float(raw[chosen]))} to {slo.target} "
                f"within SLO {fmt.ms(slo.latency_ms)}")
