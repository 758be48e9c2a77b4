"""Decision throughput and latency at 1k, 10k and 100k nodes: the product's entry point
(:class:`placement.plan.Planner.place_one`, the node-class assigner, as the reconciler,
preview and migration call it) end to end, explanation included, vs the naive rescan.

Nodes: the six scenario-A node types spread over :data:`SITES` sites (each its own
location, RTT 5–60 ms between them), background load 0–50 % — so the node classes
number ``6 × SITES`` whatever the node count. Requests: drawn from :data:`TEMPLATES`
task templates (as replicas of a deployment or the tasks of a parameter sweep share
one spec), mixed cpu/memory/gpu, some with SLOs and input data. The "distinct" row makes
every request its own task class — the worst case for the cache.

Rows (:data:`ROWS`), each placing its requests on a copy of the same snapshot, timed per
request with ``time.perf_counter`` (decision object and, unless said, its explanation —
reasons, scores, filter counts, runners-up — included):

* the product path, GPU fragmentation on (default weight) and off;
* :data:`BEFORE`: the path as it was before the growth bound and the lean explanations
  (issue 16 item 4, second round), side by side in the same run — ``ΔF`` computed on
  every GPU node ahead of enough ``ΔF = 0`` ones (``bound_growth=False``), a fit test
  over every member of a group instead of its index (``index_groups=False``), static scores
  and reasons rebuilt for every decision and the fragmentation reason read through
  ``n``-sized arrays (``Planner.lean_explanations=False``) — timed interleaved with the
  product row, request by request, so that load on a shared machine weighs on both
  alike;
* :data:`LOAD`: the framework the control plane builds (measured load on: two dynamic
  terms, bounded per node class together, ``BatchAssigner._joint_walk``), and
  :data:`LOAD_BEFORE`, the same without that bound (the capped evaluation), timed
  interleaved with it;
* the naive full rescan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.placement import scenario_a as A
from continuum.model import Node, Objective, PowerProfile, Resources, Slo, Task
from placement import DataSource, PlacementRequest, Snapshot, StaticNetwork
from placement.batch import naive_assign
from placement.framework import default_framework
from placement.plan import Planner
from placement.plugins.load import with_load

SITES = 8
TEMPLATES = 50
PRODUCT = "continuum (templates)"
BEFORE = "before: no growth bound, explanation rebuilt (templates)"
"""The path as it was before this round (``bound_growth=False``, ``index_groups=False``,
``lean_explanations=False``), explanation included: the old path, timed in the same run."""
LOAD = "continuum (templates), measured load on (the control plane's framework)"
"""``with_load(default_framework())``, as control_plane/models.py builds it: NodeLoad is a
second dynamic term, bounded per node class together with GPU fragmentation for a
CPU-only request (``BatchAssigner._joint_walk``; a GPU request keeps the capped
evaluation of up to 1,024 fitting nodes, as in the product row); the nodes carry no
measured utilisation here, so the load is the accounting ``1 − free/allocatable``."""
LOAD_BEFORE = "before: measured load on, capped evaluation (the control plane's framework)"
""":data:`LOAD` as before the joint bound (``joint_bound=False``: every request on up to
1,024 capped candidates), timed interleaved with it."""
CHECKED = 2000
"""Requests of the product row, and of the :data:`LOAD` row, whose CPU-only choices are
checked against the exhaustive one (a quarter of that above 10k nodes, where each
exhaustive choice costs milliseconds)."""


def cluster(n: int, seed: int = 0) -> tuple[list[Node], StaticNetwork]:
    rng = np.random.default_rng(seed)
    types = list(A.NODE_TYPES)
    net = StaticNetwork()
    for a in range(SITES):
        for b in range(a + 1, SITES):
            net.add(f"loc-{a}", f"loc-{b}", float(rng.uniform(5, 60)), float(rng.uniform(1e8, 1e10)))
    nodes = []
    for i in range(n):
        t = types[i % len(types)]
        site = (i // len(types)) % SITES
        tier, kind, _, cpu, mem, gpu, speed, idle, mx, gw, qw = A.NODE_TYPES[t]
        used = rng.uniform(0, 0.5)
        cap = Resources(cpu=cpu, memory=mem * A.GI, gpu=gpu)
        nodes.append(Node(
            id=f"s{site}-{t}/n{i}", name=f"n{i}", site=f"s{site}-{t}", site_kind=kind, tier=tier,
            capacity=cap, allocatable=cap,
            free=Resources(cpu=round(cpu * (1 - used), 1), memory=int(mem * A.GI * (1 - used)),
                           gpu=gpu),
            speed=speed, power=PowerProfile(idle_watts=idle, max_watts=mx, gpu_watts=gw),
            location=f"loc-{site}", runtimes=["process", "container"], queue_wait_s=qw))
    return nodes, net


def requests(count: int, seed: int = 1, distinct: bool = False) -> list[PlacementRequest]:
    rng = np.random.default_rng(seed)
    templates = []
    for k in range(count if distinct else TEMPLATES):
        u = rng.uniform()
        slo = Slo(target=f"loc-{int(rng.integers(SITES))}", latency_ms=30.0) if u < 0.3 else None
        gpu = 1 if u > 0.95 else 0
        t = Task(name=f"t{k}", command=["run"], work=float(rng.uniform(10, 5000)),
                 resources=Resources(cpu=float(rng.choice([0.25, 0.5, 1, 2])),
                                     memory=int(rng.choice([256, 512, 1024])) * 2**20, gpu=gpu),
                 slo=slo)
        src = [DataSource(bytes=int(rng.uniform(1e6, 1e9)),
                          locations=[f"loc-{int(rng.integers(SITES))}"])] if u > 0.6 else []
        templates.append((t, src))
    out = []
    for i in range(count):
        t, src = templates[i if distinct else int(rng.integers(TEMPLATES))]
        out.append(PlacementRequest(f"r{i}", t, Objective(), src))
    return out


@dataclass
class Row:
    nodes: int
    classes: int
    policy: str
    requests: int
    placed: int
    per_s: float
    p99_ms: float
    build_s: float


def _planner(snap: Snapshot, fragmentation: bool, prune: bool = True,
             cap: int | None = None, lean: bool = True, load: bool = False,
             joint: bool = True) -> Planner:
    """A planner on a copy of ``snap``; ``lean`` False: the path before this round
    (:data:`BEFORE`); ``load``: with measured load (:data:`LOAD`); ``joint`` False: without
    the joint bound (:data:`LOAD_BEFORE`)."""
    fw = default_framework() if fragmentation else default_framework(fragmentation_weight=0.0)
    if load:
        fw = with_load(fw)
    p = Planner(snap.copy(), fw)
    p.assigner.prune_dynamic = prune
    p.assigner.dynamic_candidates = cap
    p.assigner.bound_growth = lean
    p.assigner.index_groups = lean
    p.lean_explanations = lean
    p.assigner.joint_bound = joint
    return p


def exhaustive_choice(p: Planner, req: PlacementRequest) -> int:
    """The node the exhaustive evaluation picks for ``req`` in ``p``'s current state
    (``prune_dynamic`` off, no candidate cap), without placing it."""
    a = p.assigner
    saved = a.prune_dynamic, a.dynamic_candidates, a.keep
    a.prune_dynamic, a.dynamic_candidates, a.keep = False, None, 1
    try:
        a.observe(req)
        return a.choose(req)
    finally:
        a.prune_dynamic, a.dynamic_candidates, a.keep = saved


def measure(n: int, fast_requests: int, naive_requests: int) -> list[Row]:
    """The rows of the module docstring at ``n`` nodes; raises AssertionError when the
    product path, or the control plane's framework (:data:`LOAD`), picks another node for
    a CPU-only request than the exhaustive evaluation in the same state (the check)."""
    import gc
    import time

    nodes, net = cluster(n)
    snap = Snapshot(nodes=nodes, network=net)
    rows = []
    chosen: dict[str, list[int]] = {}
    distinct = min(fast_requests, 3000)
    product = PRODUCT + ", explanation included"
    control = LOAD + ", explanation included"
    control_before = LOAD_BEFORE + ", explanation included"
    checked, limit = {product: 0, control: 0}, CHECKED if n <= 10_000 else CHECKED // 4
    before = BEFORE + ", explanation included"
    # (label, requests, fragmentation on, bound on, candidate cap, explain, measured load);
    # a group's rows are timed interleaved, request by request (the product path and the
    # old one: load on a shared machine drifts alike for both)
    groups = [
        [(product, requests(fast_requests), True, True, 1024, True, False),
         (before, requests(fast_requests), True, True, 1024, True, False)],
        [(control, requests(fast_requests), True, True, 1024, True, True),
         (control_before, requests(fast_requests), True, True, 1024, True, True)],
        [(PRODUCT + ", no explanation", requests(fast_requests), True, True, 1024, False, False)],
        [("continuum (distinct), explanation included", requests(distinct, 2, True), True,
          True, 1024, True, False)],
        [(PRODUCT + ", fragmentation off, explanation included", requests(fast_requests),
          False, True, 1024, True, False)],
        [("continuum (distinct), fragmentation off, explanation included",
          requests(distinct, 2, True), False, True, 1024, True, False)]]
    for group in groups:
        planners, builds = [], []
        for label, _, frag, prune, cap, _, load in group:
            t0 = time.perf_counter()
            planners.append(_planner(snap, frag, prune, cap, label != before, load,
                                     label != control_before))
            builds.append(time.perf_counter() - t0)
        gc.collect()  # the snapshot's garbage is not collected inside the timed loop
        count = len(group[0][1])
        lats = [np.empty(count) for _ in group]
        placed = [0] * len(group)
        for label, *_ in group:
            chosen[label] = []
        for k in range(count):
            for g in (range(len(group)) if k % 2 == 0 else reversed(range(len(group)))):
                label, reqs, _, _, _, explain, _ = group[g]
                p, r = planners[g], reqs[k]
                want = (exhaustive_choice(p, r) if label in (product, control) and k < limit
                        and r.task.resources.gpu <= 0 else None)
                s = time.perf_counter()
                dec = p.place_one(r, explain=explain).decision
                lats[g][k] = time.perf_counter() - s
                j = -1 if dec is None else p.snap.index[dec.node]
                if want is not None:
                    checked[label] += 1
                    if j != want:
                        raise AssertionError(f"{n} nodes, {label}: request {k} placed on "
                                             f"node {j}, the exhaustive evaluation picks "
                                             f"{want}")
                placed[g] += j >= 0
                chosen[label].append(j)
        for g, (label, *_) in enumerate(group):
            if label.endswith("no explanation") and chosen[label] != chosen[product]:
                raise AssertionError(f"{n} nodes: explaining changed a placement")
            a = planners[g].assigner
            assert a.classes is not None
            lat = lats[g]
            rows.append(Row(n, a.classes.count, label, count, placed[g], count / lat.sum(),
                            float(np.percentile(lat, 99)) * 1e3, builds[g]))
    reqs = requests(naive_requests)
    s2 = snap.copy()
    lat = np.empty(len(reqs))
    placed = 0
    for k, r in enumerate(reqs):
        s = time.perf_counter()
        placed += int(naive_assign([r], s2)[0] >= 0)
        lat[k] = time.perf_counter() - s
    print(f"{n:,} nodes: {checked[product]} decisions of the product row and "
          f"{checked[control]} of the control plane's framework checked against the exhaustive "
          "evaluation, all the same", flush=True)
    rows.append(Row(n, n, "naive full rescan", len(reqs), placed, len(reqs) / lat.sum(),
                    float(np.percentile(lat, 99)) * 1e3, 0.0))
    return rows
