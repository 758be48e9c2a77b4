"""NodeLoad: prefer nodes whose *measured* CPU load is low (term ``time``).

Live utilisation comes from monitoring (Prometheus, device telemetry, the twin) and
counts load Continuum did not place (other users, daemons). As in load-aware
scheduling (Trimaran's TargetLoadPacking / LoadVariationRiskBalancing in
kubernetes-sigs/scheduler-plugins, which score nodes by measured utilisation from a
metrics provider), the raw value is the expected slowdown of a new task under
processor sharing, ``1 / (1 − u)`` (M/G/1-PS mean response time ``x / (1 − ρ)``,
Kleinrock, *Queueing Systems* vol. 2, 1976), with ``u`` clipped to :data:`MAX_LOAD`.

* the measurement does not yet show the work Continuum placed after it was taken. As
  Trimaran's TargetLoadPacking adds the CPU requested by pods bound since the metrics
  window to the measured utilisation (``missingCPUUtilMillis`` in
  ``pkg/trimaran/targetloadpacking/targetloadpacking.go``), the cores assumed on the
  node in this placement batch (``Snapshot.assume``) are added, as a share of its
  capacity; and the node is never believed less busy than Continuum's own accounting,
  ``1 − free/allocatable`` (work placed in earlier cycles that is not running yet):
  ``u = max(u_measured + assumed/capacity, 1 − free/allocatable)``;
* a **stale** value (older than its site's ``staleAfter``) is used with a penalty:
  ``u + STALE_PENALTY · (1 − u)`` — the last value, trusted less;
* an **unknown** value falls back to the accounting alone, ``1 − free/allocatable``;
  capacity the accounting cannot bound (free or allocatable infinite, allocatable 0)
  counts as 0 accounted load.

Lower is better. The term reads free capacity, so it is a
:class:`~placement.framework.DynamicScore`: the batch assigner re-evaluates it per request
over the candidate nodes (a batch spreads instead of herding onto the least loaded node).
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


def _initial_free_cpu(snap: Snapshot) -> np.ndarray:
    """Free cores per node when ``snap`` was built (before any ``assume``); kept in its memo."""
    return snap.memo("initial_free_cpu", lambda: np.array(
        [(nd.free if nd.free is not None else nd.allocatable).cpu for nd in snap.nodes],
        dtype=np.float64))


def effective_load(snap: Snapshot, idx: np.ndarray | None = None) -> np.ndarray:
    """Per node utilisation placement believes, 0..MAX_LOAD (module docstring): shape
    ``(n,)``, or ``(len(idx),)`` over the nodes ``idx`` only (elementwise: the same values,
    without an ``O(n)`` pass — the batch assigner asks per request over its candidates)."""
    if idx is None:
        idx = np.arange(snap.n)
    k = idx.size
    free, alloc = snap.free_cpu[idx], snap.alloc_cpu[idx]
    bounded = np.isfinite(free) & np.isfinite(alloc) & (alloc > 0)
    accounted = np.zeros(k)
    np.subtract(1.0, free / np.where(bounded, alloc, 1.0), out=accounted, where=bounded)
    with np.errstate(invalid="ignore"):  # inf − inf where free is unbounded: not used
        assumed = np.where(np.isfinite(free), _initial_free_cpu(snap)[idx] - free, 0.0)
    cap = snap.cap_cpu[idx]
    added = np.divide(np.maximum(assumed, 0.0), cap, out=np.zeros(k),
                      where=np.isfinite(cap) & (cap > 0))
    # NaN (unknown) measured + added is NaN; fmax then takes the accounting alone
    u = np.clip(np.fmax(snap.utilisation[idx] + added, accounted), 0.0, 1.0)
    u = np.where(snap.metrics_stale[idx], u + STALE_PENALTY * (1.0 - u), u)
    out: np.ndarray = np.minimum(u, MAX_LOAD)
    return out


class NodeLoad:
    """Score: processor-sharing slowdown ``1 / (1 − u)`` from measured load, lower is better."""

    name = NAME
    term: Term = "time"
    lower_is_better = True
    floor = 1.0
    """slowdown: 1.0 vs 1.1 (10 % vs 0 % busy) hardly matters."""
    ratio_to_best = True
    """Declares :class:`~placement.framework.RatioToBest`: the assigner normalises the
    slowdown as the framework does, as a ratio to the best node's."""

    def score(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
              mask: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 - effective_load(snap))

    def delta(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        """The slowdown over ``idx`` now (it reads free capacity, so the batch assigner
        re-evaluates it per request: a :class:`~placement.framework.DynamicScore`)."""
        return self.node_delta(snap, idx)

    def node_delta(self, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        """:meth:`delta` without a request, shape ``(len(idx),)``, in ``[1, 20]``: it
        reads neither the request nor other nodes — node ``i``'s slowdown reads only its
        free cpu (which the batch assigner changes through ``take``/``release``) and
        fields fixed for the snapshot (allocatable, capacity, the cpu free when the
        snapshot was built, measured utilisation and its staleness) — so the assigner
        keeps it per node (:class:`~placement.framework.NodeDelta`)."""
        out: np.ndarray = 1.0 / (1.0 - effective_load(snap, idx))
        return out

    def pressure(self, snap: Snapshot) -> float:
        """Always 1: measured load matters whatever the cluster's fill."""
        return 1.0

    def describe(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
                 raw: np.ndarray, chosen: int, mask: np.ndarray) -> str | None:
        return _line(snap, chosen)

    def describe_candidates(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray,
                            raw: np.ndarray, at: int) -> str | None:
        """:meth:`describe` of the chosen candidate ``idx[at]`` (it reads only that node;
        :class:`~placement.framework.DescribesCandidates`)."""
        return _line(snap, int(idx[at]))


def _line(snap: Snapshot, chosen: int) -> str:
    """NodeLoad's reason for node ``chosen``: its believed load, and whether it is stale."""
    u = float(effective_load(snap, np.array([chosen]))[0])
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
