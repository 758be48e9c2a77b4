"""Decision throughput and latency at 1k, 10k and 100k nodes: :func:`placement.plan`'s
path (:class:`placement.plan.Planner`, the node-class assigner) vs the naive rescan.

Nodes: the six scenario-A node types spread over :data:`SITES` sites (each its own
location, RTT 5–60 ms between them), background load 0–50 % — so the node classes
number ``6 × SITES`` whatever the node count. Requests: drawn from :data:`TEMPLATES`
task templates (as replicas of a deployment or the tasks of a parameter sweep share
one spec), mixed cpu/memory/gpu, some with SLOs and input data. A second row
("distinct") makes every request its own task class — the worst case for the cache.

A third row evaluates the GPU-fragmentation term without its per-node memo
(:data:`UNMEMO`) on the first 2,000 template requests and checks it places them exactly
as the memoised row does. Both sides place the same requests on copies of the same snapshot, timed per request
with ``time.perf_counter``: ``Planner.place_one`` end to end (decision object included;
the explanation only in the :data:`EXPLAINED` row, which must place identically).
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
from placement.plugins.fragmentation import GpuFragmentation

SITES = 8
TEMPLATES = 50
UNMEMO = "continuum (templates), fragmentation not memoised"
EXPLAINED = "continuum (templates), explanation included"
"""The same requests through :meth:`placement.plan.Planner.place_one` with the decision's
explanation built (reasons, scores, filter counts, runners-up): the reconciler's path."""
"""The assigner with the term computed afresh for every candidate of every request
(``cache_dynamic=False``): the same placements (checked here), the cost before the memo."""


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


def measure(n: int, fast_requests: int, naive_requests: int) -> list[Row]:
    import time

    nodes, net = cluster(n)
    snap = Snapshot(nodes=nodes, network=net)
    rows = []
    off = default_framework()
    for plugin in off.scores:
        if isinstance(plugin, GpuFragmentation):
            plugin.weight = 0.0
    chosen: dict[str, list[int]] = {}
    for label, reqs, fw, memo in (
            ("continuum (templates)", requests(fast_requests), default_framework(), True),
            (EXPLAINED, requests(fast_requests), default_framework(), True),
            ("continuum (distinct)", requests(min(fast_requests, 3000), 2, True),
             default_framework(), True),
            (UNMEMO, requests(min(fast_requests, 2000)), default_framework(), False),
            ("continuum (templates), fragmentation off", requests(fast_requests), off, True),
            ("continuum (distinct), fragmentation off",
             requests(min(fast_requests, 3000), 2, True), off, True)):
        t0 = time.perf_counter()
        p = Planner(snap.copy(), fw)
        p.assigner.cache_dynamic = memo
        a = p.assigner
        build = time.perf_counter() - t0
        explain = label == EXPLAINED
        lat = np.empty(len(reqs))
        placed = 0
        got = chosen[label] = []
        for k, r in enumerate(reqs):
            s = time.perf_counter()
            dec = p.place_one(r, explain=explain).decision
            lat[k] = time.perf_counter() - s
            j = -1 if dec is None else p.snap.index[dec.node]
            placed += j >= 0
            got.append(j)
        if not memo or explain:  # the memo is exact, explaining changes nothing: the same
            ref = chosen["continuum (templates)"][:len(got)]  # requests go to the same nodes
            if got != ref:
                raise AssertionError(f"{n} nodes: placements of {label!r} differ")
        assert a.classes is not None
        rows.append(Row(n, a.classes.count, label, len(reqs), placed, len(reqs) / lat.sum(),
                        float(np.percentile(lat, 99)) * 1e3, build))
    reqs = requests(naive_requests)
    s2 = snap.copy()
    lat = np.empty(len(reqs))
    placed = 0
    for k, r in enumerate(reqs):
        s = time.perf_counter()
        placed += int(naive_assign([r], s2)[0] >= 0)
        lat[k] = time.perf_counter() - s
    rows.append(Row(n, n, "naive full rescan", len(reqs), placed, len(reqs) / lat.sum(),
                    float(np.percentile(lat, 99)) * 1e3, 0.0))
    return rows
