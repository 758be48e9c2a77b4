"""The placement policies compared by the benchmark, all over one :class:`Snapshot`.

Every policy takes requests largest first (as the control plane does), sees the same
static feasibility (node constraints: readiness, tiers, arch, labels, sites, taints,
runtimes) and the same capacity test, deducts what it places, and returns a node index
per request (-1 = unplaced). Only the Continuum policies also apply the SLO latency
filter: the others have no notion of RTT SLOs (kube-scheduler does not).

* ``random``: uniformly among the feasible nodes (seeded).
* ``round-robin``: the next feasible node after the last one chosen, cyclically.
* ``kube-default``: kube-scheduler's default scoring, re-implemented from
  kubernetes/kubernetes v1.30 ``pkg/scheduler`` (formulas checked against the source:
  ``leastRequestedScore`` = ``(capacity − requested)·100/capacity`` in int64, 0 when
  requested > capacity, over the *non-zero* requests — a zero cpu/memory request counts
  as 100 millicores / 200 MiB, ``util.GetNonzeroRequestForResource``;
  ``balancedResourceScorer`` over the real requests, fractions capped at 1, ``std =
  |f_cpu − f_mem|/2`` for two resources, ``int64((1 − std)·100)``): ``NodeResourcesFit`` with the
  ``LeastAllocated`` strategy (cpu and memory, weight 1 each:
  ``score = Σ_r w_r·(allocatable_r − requested_r)·100/allocatable_r / Σ w_r``,
  ``plugins/noderesources/least_allocated.go``) plus ``NodeResourcesBalancedAllocation``
  (``score = (1 − std(requested_r / allocatable_r))·100`` over cpu and memory,
  ``balanced_allocation.go``), each with its default profile weight 1
  (``apis/config/v1/default_plugins.go``); scores are integers (``int64`` truncation as
  in Go). ``percentageOfNodesToScore`` is adaptive (``schedule_one.go``
  ``numFeasibleNodesToFind``: ``50 − n/125`` %, at least 5 %, at least 100 nodes), the
  search starts where the previous one stopped, and ties are broken uniformly at random
  (``selectHost``). Other default score plugins (TaintToleration, NodeAffinity,
  ImageLocality, InterPodAffinity, PodTopologySpread) score every node equally here
  (no preferences, no images, no affinities) and are omitted.
* ``greedy-latency``: least RTT to the task's SLO target, else to its first input's
  location (ties → lowest index).
* ``greedy-energy``: least analytic energy (J) (ties → lowest index).
* ``locality-first``: each task where its input lives — the feasible nodes moving the
  fewest input bytes over the WAN (:func:`placement.predict.wan_bytes`), among them the
  least RTT to the SLO target or first input (as ``greedy-latency``), among those
  kube-default's score (highest, ties → lowest index): a Kubernetes cluster with a node
  affinity to the data's location, falling back to the nearest nodes when none fits.
* ``continuum-analytic`` / ``continuum-learned``: :func:`placement.plan` (the entry
  point the control plane places through; node-class assigner, no explanations) with the
  analytic or the learned predictor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from placement import CycleState, PlacementRequest, Snapshot, plan
from placement.batch import size_order
from placement.framework import Framework, default_framework
from placement.plugins.constraints import NodeConstraints
from placement.predict import AnalyticPredictor, Predictor, wan_bytes

Policy = Callable[[Sequence[PlacementRequest], Snapshot], np.ndarray]

_CONSTRAINTS = NodeConstraints()


def _static_masks(requests: Sequence[PlacementRequest], snap: Snapshot) -> list[np.ndarray]:
    cache: dict[tuple[int, bool], np.ndarray] = {}
    out = []
    for req in requests:  # requests outlive the loop, so their constraints' ids are unique
        key = id(req.task.constraints), req.task.image is not None
        if key not in cache:
            cache[key] = _CONSTRAINTS.filter(req, snap, CycleState(AnalyticPredictor())).mask
        out.append(cache[key])
    return out


def _fits(req: PlacementRequest, snap: Snapshot) -> np.ndarray:
    return snap.fits(req.task.resources)


def _generic(choose: Callable[[PlacementRequest, Snapshot, np.ndarray], int]) -> Policy:
    def run(requests: Sequence[PlacementRequest], snap: Snapshot) -> np.ndarray:
        masks = _static_masks(requests, snap)
        out = np.full(len(requests), -1, dtype=np.int64)
        for i in size_order(requests):
            ok = masks[i] & _fits(requests[i], snap)
            if not ok.any():
                continue
            k = choose(requests[i], snap, ok)
            snap.assume(k, requests[i].task.resources)
            out[i] = k
        return out
    return run


def random_policy(seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)
    return _generic(lambda req, snap, ok: int(rng.choice(np.flatnonzero(ok))))


def round_robin() -> Policy:
    last = [-1]

    def choose(req: PlacementRequest, snap: Snapshot, ok: np.ndarray) -> int:
        idx = np.flatnonzero(ok)
        after = idx[idx > last[0]]
        k = int(after[0]) if after.size else int(idx[0])
        last[0] = k
        return k
    return _generic(choose)


def kube_scores(req: PlacementRequest, snap: Snapshot, feas: np.ndarray,
                balance: str = "v1.30") -> np.ndarray:
    """kube-scheduler's default score (``NodeResourcesFit`` LeastAllocated +
    ``NodeResourcesBalancedAllocation``, integers 0–200) of ``req`` on each node index of
    ``feas`` given the snapshot's free capacity; ``balance`` as for :func:`kube_default`."""
    nodes = snap.nodes
    r = req.task.resources
    alloc_cpu = np.array([nodes[j].allocatable.cpu for j in feas]) * 1000.0
    alloc_mem = np.array([float(nodes[j].allocatable.memory) for j in feas])
    used_cpu = alloc_cpu - snap.free_cpu[feas] * 1000.0
    used_mem = alloc_mem - snap.free_mem[feas].astype(np.float64)
    req_cpu = used_cpu + r.cpu * 1000.0
    req_mem = used_mem + float(r.memory)
    # LeastAllocated counts a zero request as the non-zero default (100 millicores,
    # 200 MiB: GetNonzeroRequestForResource); BalancedAllocation uses the real one
    nz_cpu = used_cpu + (r.cpu * 1000.0 if r.cpu > 0 else 100.0)
    nz_mem = used_mem + (float(r.memory) if r.memory > 0 else 200.0 * 2**20)
    least = (np.floor(np.maximum(alloc_cpu - nz_cpu, 0) * 100 / alloc_cpu)
             + np.floor(np.maximum(alloc_mem - nz_mem, 0) * 100 / alloc_mem)) // 2
    fc = np.minimum(req_cpu / alloc_cpu, 1.0)
    fm = np.minimum(req_mem / alloc_mem, 1.0)
    std = np.abs(fc - fm) / 2.0
    balanced = np.floor((1.0 - std) * 100)
    if balance == "v1.37":
        before = np.floor((1.0 - np.abs(np.minimum(used_cpu / alloc_cpu, 1.0)
                                        - np.minimum(used_mem / alloc_mem, 1.0)) / 2.0)
                          * 100)
        balanced = 50 + (50 + balanced - before) // 2
    total = least + balanced
    return total


def kube_default(seed: int = 0, balance: str = "v1.30") -> Policy:
    """kube-scheduler default scoring (see the module docstring). ``balance``: ``v1.30``
    scores ``NodeResourcesBalancedAllocation`` on the balance with the pod (as above);
    ``v1.37`` as kube-scheduler v1.37 does, on the balance's *change*
    (``balancedResourceScorer``: ``50 + (50 + score_with − score_without) / 2`` in
    int64, each score the v1.30 formula over the node's requests with and without the
    pod; ``balanced_allocation.go``)."""
    if balance not in ("v1.30", "v1.37"):
        raise ValueError(f"balance must be 'v1.30' or 'v1.37', got {balance!r}")
    rng = np.random.default_rng(seed)
    start = [0]

    def choose(req: PlacementRequest, snap: Snapshot, ok: np.ndarray) -> int:
        n = snap.n
        pct = max(5, 50 - n // 125)  # Go: int32 division in numFeasibleNodesToFind
        want = n if n < 100 else max(100, int(n * pct / 100))
        order = (np.arange(n) + start[0]) % n
        feas = order[ok[order]]
        if feas.size > want:
            last = feas[want - 1]
            feas = feas[:want]
            start[0] = int((last + 1) % n)
        else:
            start[0] = int((order[-1] + 1) % n) if n else 0
        total = kube_scores(req, snap, feas, balance)
        best = np.flatnonzero(total == total.max())
        return int(feas[int(rng.choice(best))])
    return _generic(choose)


def _latency_target(req: PlacementRequest, snap: Snapshot) -> np.ndarray:
    if req.task.slo is not None:
        return snap.rtt_from(snap.resolve_location(req.task.slo.target))
    if req.sources and req.sources[0].locations:
        return snap.rtt_from(snap.resolve_location(req.sources[0].locations[0]))
    return np.zeros(snap.n)


def greedy_latency() -> Policy:
    def choose(req: PlacementRequest, snap: Snapshot, ok: np.ndarray) -> int:
        rtt = np.where(ok, _latency_target(req, snap), np.inf)
        return int(np.argmin(rtt))
    return _generic(choose)


def greedy_energy() -> Policy:
    a = AnalyticPredictor()

    def choose(req: PlacementRequest, snap: Snapshot, ok: np.ndarray) -> int:
        e = a.energy_j(req.task, snap, a.runtime_s(req.task, snap))
        return int(np.argmin(np.where(ok, e, np.inf)))
    return _generic(choose)


def locality_first() -> Policy:
    """Each task where its input lives (module docstring)."""
    def choose(req: PlacementRequest, snap: Snapshot, ok: np.ndarray) -> int:
        wan = np.where(ok, wan_bytes(req.sources, snap), np.iinfo(np.int64).max)
        near = ok & (wan == wan.min())
        rtt = np.where(near, _latency_target(req, snap), np.inf)
        best = np.flatnonzero(near & (rtt == rtt.min()))
        score = kube_scores(req, snap, best)
        return int(best[int(np.argmax(score))])
    return _generic(choose)


def continuum(predictor: Predictor | None = None, framework: Framework | None = None,
              order: str = "size") -> Callable[..., np.ndarray]:
    """:func:`placement.plan` with ``predictor``, without explanations; returns node
    indices (-1 = unplaced). ``order``: ``size``, ``regret``, or ``best`` (the better
    of both by the batch objective, :meth:`~placement.batch.BatchAssigner.assign`,
    whose choices the plan then takes)."""
    def run(requests: Sequence[PlacementRequest], snap: Snapshot) -> np.ndarray:
        fw = framework or default_framework(predictor)
        out = plan(requests, snap, fw, explain=False, order=order)
        return np.array([-1 if o.decision is None else snap.index[o.decision.node]
                         for o in out], dtype=np.int64)
    return run
