"""NodeLoad: prefer nodes whose *measured* CPU load is low (term ``time``).

Live utilisation comes from monitoring (Prometheus, device telemetry, the twin) and
counts load Continuum did not place (other users, daemons). As in load-aware
scheduling (Trimaran's TargetLoadPacking / LoadVariationRiskBalancing in
kubernetes-sigs/scheduler-plugins, which score nodes by measured utilisation from a
metrics provider), the raw value is the expected slowdown of a new task under
processor sharing, ``1 / (1 − u)`` (M/G/1-PS mean response time ``x / (1 − ρ)``,
Kleinrock, *Queueing Systems* vol. 2, 1976), with ``u`` clipped to :data:`MAX_LOAD`.

* a **stale** value (older than its site's ``staleAfter``) is used with a penalty:
  ``u + STALE_PENALTY · (1 − u)`` — the last value, trusted less;
* an **unknown** value falls back to Continuum's own accounting, ``1 − free/allocatable``.

Lower is better.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from placement.framework import Framework, Term
from placement.predict import CycleState

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "NodeLoad"
MAX_LOAD = 0.95
"""Utilisation cap, so a saturated node's slowdown is large (20×) but finite."""
STALE_PENALTY = 0.25
"""Share of the remaining headroom assumed busy when the value is stale."""


def effective_load(snap: Snapshot) -> np.ndarray:
    """Per node utilisation placement believes, 0..MAX_LOAD (see the module docstring)."""
    u = snap.utilisation.copy()
    unknown = np.isnan(u)
    if unknown.any():
        alloc = snap.alloc_cpu[unknown]
        u[unknown] = 1.0 - np.divide(snap.free_cpu[unknown], alloc,
                                     out=np.ones_like(alloc), where=alloc > 0)
    u = np.clip(u, 0.0, 1.0)
    u = np.where(snap.metrics_stale, u + STALE_PENALTY * (1.0 - u), u)
    return np.minimum(u, MAX_LOAD)


class NodeLoad:
    """Score: processor-sharing slowdown ``1 / (1 − u)`` from measured load, lower is better."""

    name = NAME
    term: Term = "time"
    lower_is_better = True
    floor = 1.0
    """slowdown: 1.0 vs 1.1 (10 % vs 0 % busy) hardly matters."""

    def score(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
              mask: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 - effective_load(snap))

    def describe(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
                 raw: np.ndarray, chosen: int, mask: np.ndarray) -> str | None:
        u = 1.0 - 1.0 / float(raw[chosen])
        stale = " (stale value, penalised)" if snap.metrics_stale[chosen] else ""
        return f"CPU load {u:.0%}{stale}"


def with_load(framework: Framework) -> Framework:
    """A copy of ``framework`` with :class:`NodeLoad` appended to its score plugins.

    The control plane places with ``with_load(default_framework(predictor))`` so live metrics
    steer its decisions; ``default_framework()`` itself stays metric-free (benchmarks
    and node-class caching see identical nodes as identical).
    """
    if any(p.name == NAME for p in framework.scores):
        return framework
    return replace(framework, scores=[*framework.scores, NodeLoad()])
