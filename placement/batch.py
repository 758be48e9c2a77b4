"""Fast batch assignment over node classes: predictions once per (task class, node class).

The filter/score :func:`placement.place` evaluates every plugin over every node for every
request. At 10k–100k nodes that rescan dominates, and a learned predictor inside it would
run once per node per request. This module avoids both:

* **Node classes** (:class:`NodeClasses`): nodes that agree on everything placement reads
  except their free capacity (tier, arch, site, location, speed, capacity, power
  profile, readiness, draining, runtimes, Python modules, queue wait, taints, labels)
  form one class. A
  representative of each class stands for all of them in a small snapshot.
* **Task classes**: requests that agree on resources, work, constraints, SLO, input
  sources and objective share one evaluation (:class:`ClassCosts`): the framework's
  filters (with capacity ignored) and score plugins run over the *representatives*, so
  the predictor — analytic or learned — runs once per (task class, node class), and the
  result is cached for the rest of the batch.
* **Capacity** is the only per-node state: the assigner walks the feasible classes in
  cost order and takes, in the first class with room, the fitting node with the least
  free cpu (best fit; every node of a class has the same cost). Each class keeps an upper
  bound of its members' free cpu/memory/gpu, refreshed only after a scan that found
  nothing, so a full class is skipped in O(1) without rescanning its members.

The **objective** shared with the exact MILP (:mod:`placement.milp`) and the naive
baseline (:func:`naive_assign`) is linear in the assignment: a request placed on node
class ``c`` costs ``Σ_t w_t · (1 − (min_c' v_t(c') + f_t) / (v_t(c) + f_t)) / Σ_t w_t``
over the score plugins ``t`` (weights from the workflow's objective, floors ``f_t``
from the plugins), the minimum taken over the statically feasible classes — that is
``1 − total/100`` of the framework's weighted score (:func:`placement.framework.normalize`),
0 = the best node in every term, at most 1. It does not depend on current load, which
is what makes it cacheable and makes the batch total a sum the MILP can minimise
exactly.

Why one module of this size: the node classes, their cost tables, the dynamic terms and
the assume-and-deduct loop all index the same per-class arrays, and every path that places
(placement.plan, the MILP, migration, the bench) reads them; the entry point and the
explanations are placement/plan.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import InitVar, dataclass, field
from typing import cast

import numpy as np

from continuum.model import Task
from placement.assign import DataSource, PlacementRequest
from placement.framework import (
    BoundsDelta,
    CachedDelta,
    DeltaCache,
    DynamicScore,
    Framework,
    NodeDelta,
    ZeroDelta,
    default_framework,
    ratio_to_best,
)
from placement.plugins.resources import NodeResourcesFit
from placement.predict import (
    CycleState,
    ExplainsFallback,
    NodePredictions,
    Predictor,
    PredictsQueueWait,
    Prefetches,
    predictions,
    provides,
)
from placement.snapshot import CPU_EPS, Snapshot

BIG_MEM = np.iinfo(np.int64).max // 4
"""Free memory (bytes) given to representatives so that the capacity filter passes."""


# ---------------------------------------------------------------- node classes


def _node_keys(snap: Snapshot) -> list[tuple[object, ...]]:
    """What makes two nodes interchangeable for scoring, free capacity aside, per node. The
    measured CPU utilisation (rounded to 1 %, the resolution NodeLoad's reasons show) and
    its staleness are part of it, so nodes under different live load never share a class
    (else NodeLoad would score every member with the representative's load).

    The snapshot's columns are read once as Python lists (``tolist``: the same floats,
    ints and bools an element read gives), not an element at a time: ``O(n)`` with a
    small constant, as every :func:`placement.plan` call builds the classes anew."""
    rounded = {u: round(u, 2) for u in set(snap.utilisation.tolist())}  # few distinct
    cols = zip(
        snap.utilisation.tolist(), snap.metrics_stale.tolist(), snap.tier.tolist(),
        snap.loc.tolist(), snap.speed.tolist(), snap.cap_cpu.tolist(),
        snap.idle_watts.tolist(), snap.max_watts.tolist(), snap.gpu_watts.tolist(),
        snap.ready.tolist(), snap.queue_wait_s.tolist(), snap.taint_group.tolist(),
        snap.draining.tolist(), snap.nodes[:snap.n], strict=True)
    return [
        (None if u != u else rounded[u], stale, tier, nd.arch, nd.site, loc, speed, cap,
         idle, mx, gw, ready, tuple(nd.runtimes), qw, taint, tuple(sorted(nd.labels.items())),
         draining, None if nd.python_modules is None else tuple(nd.python_modules))
        for u, stale, tier, loc, speed, cap, idle, mx, gw, ready, qw, taint, draining, nd
        in cols]


@dataclass
class NodeClasses:
    """The node classes of one snapshot (``snap``, read only while they are built: the
    snapshot keeps them in its memo, so holding it here would make a reference cycle that
    leaves every snapshot — its nodes and ``n``-sized arrays — to the cyclic garbage
    collector).

    ``of``: class index per node, shape ``(n,)``; ``members``: node indices per class
    (ascending); ``reps``: representative node index per class, shape ``(C,)``;
    ``rep_snap``: a snapshot of the representatives with unlimited free capacity (for
    the static filters and the predictors). ``distinct``: node ids that each form a class
    of their own (e.g. nodes holding a cached input copy, which transfer nothing).
    """

    snap: InitVar[Snapshot]
    distinct: frozenset[str] = frozenset()
    of: np.ndarray = field(init=False)
    members: list[np.ndarray] = field(init=False)
    reps: np.ndarray = field(init=False)
    rep_snap: Snapshot = field(init=False)

    def __post_init__(self, snap: Snapshot) -> None:
        index: dict[tuple[object, ...], int] = {}
        keys = _node_keys(snap)
        own = self.distinct
        if own:
            keys = [(*k, nid) if nid in own else k for k, nid in zip(keys, snap.ids, strict=True)]
        of = np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
        self.of = of
        order = np.argsort(of, kind="stable")
        bounds = np.searchsorted(of[order], np.arange(len(index) + 1))
        self.members = [order[bounds[c]:bounds[c + 1]] for c in range(len(index))]
        self.reps = np.array([m[0] for m in self.members], dtype=np.int64)
        rep = Snapshot(nodes=[snap.nodes[int(i)] for i in self.reps], network=snap.network,
                       now=snap.now)
        rep.free_cpu = np.full(rep.n, np.inf)
        rep.free_mem = np.full(rep.n, BIG_MEM, dtype=np.int64)
        rep.free_gpu = np.full(rep.n, BIG_MEM, dtype=np.int64)
        self.rep_snap = rep

    @property
    def count(self) -> int:
        """Number of classes C."""
        return len(self.members)


# ---------------------------------------------------------------- task classes


def task_class_key(req: PlacementRequest) -> tuple[object, ...]:
    """What makes two requests interchangeable for placement (everything but the key)."""
    t = req.task
    r, c, o = t.resources, t.constraints, req.objective
    return (
        r.cpu, r.memory, r.gpu, t.work, t.kind, t.image is not None,
        tuple(c.tiers), tuple(c.arch), tuple(sorted(c.labels.items())), tuple(c.sites),
        tuple((x.key, x.operator, x.value, x.effect) for x in c.tolerations),
        tuple(t.requires.python) if t.image is None else (),
        None if t.slo is None else (t.slo.target, t.slo.latency_ms),
        tuple((s.bytes, tuple(s.locations), tuple(s.nodes)) for s in req.sources),
        (o.time, o.latency, o.energy, o.data),
    )


@dataclass(frozen=True)
class ClassCosts:
    """One task class evaluated over the node classes.

    ``feasible``: bool ``(C,)`` (static filters only: constraints, SLO, ...);
    ``cost``: float ``(C,)``, the linear objective (``inf`` where infeasible);
    ``order``: feasible class indices by ascending cost (ties → lower class index);
    ``predictions``: the predictor's arrays over the representatives, shape ``(C,)``;
    ``raw``: plugin name → its raw cost over the representatives ``(C,)`` (the static
    cost plugins, whatever their weight); ``floors``: plugin name → floor.
    """

    feasible: np.ndarray
    cost: np.ndarray
    order: np.ndarray
    predictions: NodePredictions
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)


def linear_cost(raw: dict[str, np.ndarray], floors: dict[str, float],
                weights: dict[str, float], mask: np.ndarray) -> np.ndarray:
    """The shared objective (module docstring) over ``mask``; ``inf`` elsewhere.

    ``raw``: plugin name → cost values ``(C,)`` (lower is better); ``floors``/``weights``:
    per plugin. With all weights 0 every feasible class costs 0.
    """
    out = np.full(mask.shape, np.inf)
    if not mask.any():
        return out
    wsum = sum(w for w in weights.values() if w > 0)
    if wsum <= 0:
        out[mask] = 0.0
        return out
    total = np.zeros(int(mask.sum()))
    for name, values in raw.items():
        w = weights.get(name, 0.0)
        if w <= 0:
            continue
        v = np.maximum(values[mask], 0.0)
        f = floors[name]
        total += w * (1.0 - (v.min() + f) / (v + f))
    out[mask] = total / wsum
    return out


def static_mask(req: PlacementRequest, classes: NodeClasses, fw: Framework) -> np.ndarray:
    """Feasible classes under every filter of ``fw`` but the capacity one, shape ``(C,)``."""
    rep = classes.rep_snap
    state = CycleState(fw.predictor)
    mask = np.ones(rep.n, dtype=bool)
    for f in fw.filters:
        if f.name != NodeResourcesFit.name:
            mask &= f.filter(req, rep, state).mask
    return mask


STATIC_FIELDS = slice(5, 13)
"""The fields of :func:`task_class_key` the static filters read (see :func:`static_key`)."""


def static_key(req: PlacementRequest) -> tuple[object, ...]:
    """The part of :func:`task_class_key` the static filters read (constraints, image,
    required software, SLO).

    :class:`BatchAssigner` shares one static verdict among task classes with this key, so
    a filter plugin other than ``NodeResourcesFit`` must read only these fields of a
    request (true of the built-in ``NodeConstraints`` and ``SloLatency``).
    """
    return task_class_key(req)[STATIC_FIELDS]


def evaluate(req: PlacementRequest, classes: NodeClasses, fw: Framework,
             mask: np.ndarray | None = None) -> ClassCosts:
    """Run the static filters (unless ``mask`` gives their verdict) and the score plugins
    of ``fw`` over the representatives."""
    rep = classes.rep_snap
    state = CycleState(fw.predictor)
    if mask is None:
        mask = static_mask(req, classes, fw)
    raw: dict[str, np.ndarray] = {}
    floors: dict[str, float] = {}
    caps = fw.capabilities()
    for p in fw.scores:
        if not p.lower_is_better or caps.is_dynamic(p):
            continue  # benefits have no cost form; dynamic terms are added per request
        raw[p.name] = np.asarray(p.score(req, rep, state, mask), dtype=np.float64)
        floors[p.name] = p.floor
    cost = linear_cost(raw, floors, fw.weights(req.objective), mask)
    idx = np.flatnonzero(mask)
    order = idx[np.argsort(cost[idx], kind="stable")]
    return ClassCosts(mask, cost, order, predictions(req, rep, state), raw, floors)


# ---------------------------------------------------------------- the assigner


def _normalised(plugin: DynamicScore, raw: np.ndarray) -> np.ndarray:
    """A dynamic term's cost in [0, 1] over the candidates (0 = the best), as the
    framework normalises its score (:class:`~placement.framework.RatioToBest`)."""
    f = float(plugin.floor)
    if not ratio_to_best(plugin):
        out: np.ndarray = 1.0 - f / (raw - raw.min() + f)
        return out
    x = np.maximum(raw, 0.0)
    low = float(x[np.isfinite(x)].min()) if np.isfinite(x).any() else 0.0
    out = 1.0 - (low + f) / (x + f)
    return out


def _least_first(values: np.ndarray, first: int) -> Iterator[np.ndarray]:
    """Positions of ``values`` by ascending value, ties by position, in chunks: the first
    holds at least ``first`` positions (all of those tied with the last), each next one
    about 4× more — without sorting all of ``values`` when only a prefix is read."""
    rest = np.arange(values.size)
    k = max(1, first)
    while rest.size:
        if rest.size > k:
            cut = np.partition(values[rest], k - 1)[k - 1]
            sel = rest[values[rest] <= cut]
            rest = rest[values[rest] > cut]
        else:
            sel, rest = rest, rest[:0]
        yield sel[np.lexsort((sel, values[sel]))]
        k *= 4


@dataclass(frozen=True)
class DynamicChoice:
    """The candidates of the last choice dynamic terms took part in.

    ``plugins``: the dynamic plugins used; ``idx``: candidate node indices ``(k,)``;
    ``raw``: plugin name → its raw cost there (``inf`` = not computed, it could not win);
    ``d``: plugin name → its normalised cost in [0, 1]; ``total``: each candidate's
    objective (static class cost and the ``d`` combined).
    """

    plugins: tuple[DynamicScore, ...]
    idx: np.ndarray
    raw: dict[str, np.ndarray]
    d: dict[str, np.ndarray]
    total: np.ndarray


def _refile(vals: np.ndarray, keys: np.ndarray, old: float, v: float, k: int) -> None:
    """Move ``k``, filed under value ``old`` in ``vals``/``keys`` (ascending by (value,
    key)), to value ``v``, in place: ``O(log n)`` searches and one memory move of the
    entries between its old and new place."""
    lo, hi = np.searchsorted(vals, old, "left"), np.searchsorted(vals, old, "right")
    at = int(lo + np.searchsorted(keys[lo:hi], k))
    lo, hi = np.searchsorted(vals, v, "left"), np.searchsorted(vals, v, "right")
    to = int(lo + np.searchsorted(keys[lo:hi], k))  # among the others and itself
    if to > at:  # overlapping slices: numpy copies them as memmove does
        vals[at:to - 1], keys[at:to - 1] = vals[at + 1:to], keys[at + 1:to]
        vals[to - 1], keys[to - 1] = v, k
    else:
        vals[to + 1:at + 1], keys[to + 1:at + 1] = vals[to:at], keys[to:at]
        vals[to], keys[to] = v, k


class _GroupIndex:
    """The members of one group of equal-cost node classes sorted by (free cpu, position
    in the group), kept in step with the assigner's change log: the fitting nodes of a
    CPU-only request in the frag walk's tie-break order without an ``O(group)`` pass.

    ``m``: the group's members in class order (as :meth:`BatchAssigner._groups`);
    ``val``/``pos``: free cpu and position in ``m``, ascending by (value, position);
    ``key``: the free cpu each position is filed under; ``synced``: how much of the
    change log is in.
    """

    def __init__(self, snap: Snapshot, classes: NodeClasses, cls: np.ndarray,
                 members: np.ndarray, synced: int) -> None:
        self.m = members
        sizes = [int(classes.members[int(c)].size) for c in cls]
        self.offset = dict(zip(cls.tolist(), np.cumsum([0, *sizes[:-1]]).tolist(),
                               strict=True))
        self.rebuild(snap, synced)

    def rebuild(self, snap: Snapshot, synced: int) -> None:
        """File every member afresh (``O(g log g)``)."""
        v = snap.free_cpu[self.m]
        self.key = v.copy()
        self.pos = np.lexsort((np.arange(v.size), v))
        self.val = v[self.pos]
        self.synced = synced

    def sync(self, snap: Snapshot, classes: NodeClasses, changed: list[int]) -> None:
        """Refile the members whose free cpu changed since the last sync (``O(moved)``
        each), or rebuild when many did."""
        new = changed[self.synced:]
        if not new:
            return
        if len(new) > max(64, self.m.size // 16):
            self.rebuild(snap, len(changed))
            return
        val, pos = self.val, self.pos
        for i in set(new):
            c = int(classes.of[i])
            o = self.offset.get(c)
            if o is None:
                continue
            p = o + int(np.searchsorted(classes.members[c], i))
            old, v = float(self.key[p]), float(snap.free_cpu[i])
            if old == v:
                continue
            _refile(val, pos, old, v, p)
            self.key[p] = v
        self.synced = len(changed)


class _NodeTable:
    """A :class:`~placement.framework.NodeDelta` plugin's value per node and each node
    class's members sorted by it, kept in step with the assigner's change log (the
    per-class bound of the joint class walk, :meth:`BatchAssigner._joint_walk`).

    ``x``: float ``(n,)``, ``node_delta`` of every node as the snapshot stands; ``sv``/
    ``sn``: per class, its members' values ascending and the members in that order (ties
    by node index); ``low``/``arg``: float/int ``(C,)``, each class's least value over
    all its members (fitting or not: a lower bound of its fitting ones) and the member
    holding it (``sv[c][0]``, ``sn[c][0]``); ``synced``: how much of the change log is in.
    """

    def __init__(self, plugin: NodeDelta, snap: Snapshot, classes: NodeClasses,
                 synced: int) -> None:
        self.plugin: object = plugin
        self.delta = plugin.node_delta
        self.rebuild(snap, classes, synced)

    def _values(self, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        """``node_delta`` at ``idx``, float ``(len(idx),)``; raises ValueError naming the
        plugin and the node when a value is not finite (the class bounds need it
        finite: a NaN would sort anywhere and prune a node that could win)."""
        x = np.asarray(self.delta(snap, idx), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            i = int(idx[bad[0]])
            raise ValueError(f"{type(self.plugin).__name__}.node_delta is {x[bad[0]]} at node "
                             f"{snap.ids[i]!r}: a NodeDelta plugin must return finite values")
        return x

    def rebuild(self, snap: Snapshot, classes: NodeClasses, synced: int) -> None:
        """Every node afresh (``O(n log n)``); raises ValueError when ``node_delta`` is not
        finite somewhere."""
        x = self._values(snap, np.arange(snap.n))
        self.x = x
        self.sv: list[np.ndarray] = []
        self.sn: list[np.ndarray] = []
        for m in classes.members:
            o = np.lexsort((m, x[m]))
            self.sv.append(x[m][o])
            self.sn.append(m[o])
        self.low = np.array([v[0] for v in self.sv])
        self.arg = np.array([n[0] for n in self.sn], dtype=np.int64)
        self.synced = synced

    def sync(self, snap: Snapshot, classes: NodeClasses, changed: list[int]) -> None:
        """Refile the nodes changed since the last sync in their class's order
        (``O(class size)`` memory moves each), or rebuild when many changed."""
        new = changed[self.synced:]
        if not new:
            return
        if len(new) > max(64, snap.n // 64):
            self.rebuild(snap, classes, len(changed))
            return
        u = np.array(sorted(set(new)), dtype=np.int64)
        now = self._values(snap, u)
        for i, v in zip(u.tolist(), now.tolist(), strict=True):
            old = float(self.x[i])
            if old == v:
                continue
            self.x[i] = v
            c = int(classes.of[i])
            vals, nodes = self.sv[c], self.sn[c]
            _refile(vals, nodes, old, v, i)
            self.low[c], self.arg[c] = vals[0], nodes[0]
        self.synced = len(changed)


class _Fitting:
    """The fitting nodes of one group for a CPU-only request (free cpu ≥ ``cpu``, free
    memory ≥ ``mem``) in (free cpu, position) order, materialised as far as asked:
    ``nodes``/``vals`` the prefix known, ``done`` whether it is all of them. ``chunks``
    yields position ranges exactly as :func:`_least_first` over all of them would."""

    def __init__(self, gi: _GroupIndex, snap: Snapshot, cpu: float, mem: int) -> None:
        self.gi, self.snap, self.mem = gi, snap, mem
        self.at = int(np.searchsorted(gi.val, cpu, "left"))
        self.nodes = np.zeros(0, dtype=np.int64)
        self.vals = np.zeros(0)
        self.done = self.at >= gi.val.size
        self.window = 64
        """Members scanned per step; doubles after a step that found no fitting node
        (memory rejects most of the group: ``O(log group)`` steps, not ``group / 64``)."""

    def ensure(self, count: int) -> None:
        """Materialise at least ``count`` fitting nodes (fewer when there are not)."""
        gi = self.gi
        while not self.done and self.nodes.size < count:
            w = max(self.window, 2 * (count - self.nodes.size))
            end = min(gi.val.size, self.at + w)
            nd = gi.m[gi.pos[self.at:end]]
            ok = self.snap.free_mem[nd] >= self.mem
            if not ok.any():
                self.window *= 2
            self.nodes = np.concatenate([self.nodes, nd[ok]])
            self.vals = np.concatenate([self.vals, gi.val[self.at:end][ok]])
            self.at = end
            self.done = end >= gi.val.size

    def past(self, value: float) -> None:
        """Materialise every fitting node of free cpu ≤ ``value``."""
        while not self.done and (not self.vals.size or self.vals[-1] <= value):
            self.ensure(self.nodes.size + 64)

    def chunks(self, first: int) -> Iterator[np.ndarray]:
        b, k = 0, max(1, first)
        while True:
            self.ensure(b + k + 1)
            if self.nodes.size <= b:
                return
            if self.nodes.size - b > k:
                cut = float(self.vals[b + k - 1])
                self.past(cut)
                e = b + int(np.searchsorted(self.vals[b:], cut, "right"))
            else:
                e = self.nodes.size
            yield np.arange(b, e)
            b, k = e, k * 4


def size_order(requests: Sequence[PlacementRequest]) -> list[int]:
    """Largest first (gpu, cpu, memory descending), ties in input order — as :func:`place`."""
    return sorted(range(len(requests)), key=lambda i: (
        -float(requests[i].task.resources.gpu), -float(requests[i].task.resources.cpu),
        -float(requests[i].task.resources.memory)))


@dataclass
class BatchAssigner:
    """Assigns requests to nodes of one snapshot, deducting capacity as it goes.

    Build once per snapshot (``O(n)``: the node classes); then :meth:`assign_one` costs
    ``O(C)`` for a new task class (plus the predictor over ``C`` representatives) and,
    per request, a walk over the classes in cost order with an ``O(1)`` bound check per
    full class and a vector fit test over one class's members. Mutates ``snap``'s free
    arrays (pass ``snap.copy()`` for a preview).
    """

    snap: Snapshot
    framework: Framework = field(default_factory=default_framework)
    classes: NodeClasses | None = None
    cache: dict[tuple[object, ...], ClassCosts] = field(default_factory=dict)
    best_fit: bool = True
    """Within a class take the fitting node with the least free cpu (best fit, which
    leaves large holes for large requests); False = the first fitting node."""
    dynamic_candidates: int | None = 1024
    """Most nodes a dynamic score plugin is evaluated on per request where the per-class
    bound does not apply (a GPU request, whose ``ΔF`` may be negative, or dynamic terms
    :meth:`_joint_walk` does not cover, or :attr:`joint_bound` off): the tightest of each
    class, a heuristic; None = every fitting node of the
    band. Requests the bound covers are evaluated over every fitting node of the band
    (pruned, exactly); with :attr:`prune_dynamic` False the cap applies to all."""
    prune_dynamic: bool = True
    """Bound GPU fragmentation per node class (:meth:`_frag_walk`; beside measured load,
    both together: :meth:`_joint_walk`): ``ΔF`` is computed only on the classes, and the
    nodes within them, that can still be among the best. The requests the bounds cover are
    placed as False with :attr:`dynamic_candidates` None places them (the exhaustive
    evaluation of every candidate); the others (a GPU request; the joint walk when no
    ``ΔF = 0`` node is known) take the capped evaluation either way, so with the default
    cap False may differ from True where more than 1,024 nodes fit."""
    bound_growth: bool = True
    """With :attr:`prune_dynamic`: leave uncomputed the GPU nodes whose fragmentation
    growth provably ranks them after enough ``ΔF = 0`` nodes
    (:class:`~placement.framework.BoundsDelta`); False computes ``ΔF`` on every GPU node
    ahead of them that is not provably at 0 (the path before; same placements)."""
    index_groups: bool = True
    """With :attr:`prune_dynamic`: find a CPU-only request's fitting nodes of a group of
    equal-cost classes through a per-group index sorted by free cpu (kept in step with
    :attr:`changed`), not a fit test over every member; False = the test (the path
    before; same placements)."""
    joint_bound: bool = True
    """With :attr:`prune_dynamic`: bound every dynamic term per node class together for a
    CPU-only request when GPU fragmentation is not alone — measured load beside it, as the
    control plane places (:meth:`_joint_walk`); the same placements as the exhaustive
    evaluation. False = the capped evaluation of :attr:`dynamic_candidates` nodes (the
    path before)."""
    keep: int = 1
    """How many of the best candidates a dynamic choice must know exactly: 1 for the
    choice; :class:`placement.plan.Planner` asks for the runners-up of an explanation
    too (``1 + ALTERNATIVES``)."""
    cache_dynamic: bool = True
    """Memoise a dynamic term per node where its plugin offers it
    (:class:`~placement.framework.CachedDelta`; GPU fragmentation's is exact: same
    placements, see :class:`~placement.plugins.fragmentation.FragmentationCache`); False
    recomputes it over every candidate for every request."""

    def __post_init__(self) -> None:
        if self.classes is None:
            self.classes = node_classes(self.snap)
        self._static: dict[tuple[object, ...], np.ndarray] = {}
        cl = self.classes
        s = self.snap
        self._ub_cpu = np.array([s.free_cpu[m].max() if m.size else -1.0 for m in cl.members])
        self._ub_mem = np.array([s.free_mem[m].max() if m.size else -1 for m in cl.members])
        self._ub_gpu = np.array([s.free_gpu[m].max() if m.size else -1 for m in cl.members])
        self._memo: dict[int, tuple[object, DeltaCache]] = {}
        self._group_memo: dict[int, tuple[ClassCosts, list[tuple[
            float, np.ndarray, np.ndarray, np.ndarray]]]] = {}
        self._has_gpu = bool(s.gpu_slots.shape[1]) and bool((s.gpu_slots > 0).any())
        self._observers: list[Callable[[PlacementRequest], None]] = [
            p.observe for p in self.framework.capabilities().observers]
        self.last_dynamic: DynamicChoice | None = None
        self.last_costs: tuple[PlacementRequest, ClassCosts] | None = None
        """The request :meth:`choose` last saw and its :class:`ClassCosts`."""
        self._gpu_version = 0
        """Bumped whenever free GPU units change (:meth:`_pressure`)."""
        self._pressures: dict[int, tuple[DynamicScore, int, float]] = {}
        self._gindex: dict[bytes, _GroupIndex] = {}
        self._tables: dict[int, _NodeTable] = {}
        self.changed: list[int] = []
        """Node indices whose free capacity this assigner changed, in order (take,
        release): what per-node tables kept beside it (the explanations' filter counts)
        must refresh."""

    def costs(self, req: PlacementRequest) -> ClassCosts:
        """The cached :class:`ClassCosts` of ``req``'s task class."""
        key = task_class_key(req)
        cc = self.cache.get(key)
        if cc is None:
            assert self.classes is not None
            skey = key[STATIC_FIELDS]  # = static_key(req), without recomputing the key
            mask = self._static.get(skey)
            if mask is None:
                mask = self._static[skey] = static_mask(req, self.classes, self.framework)
            cc = evaluate(req, self.classes, self.framework, mask)
            self.cache[key] = cc
        return cc

    def _dynamic(self, req: PlacementRequest
                 ) -> tuple[list[tuple[DynamicScore, float, float]], float] | None:
        """The :class:`~placement.framework.DynamicScore` plugins in use (GPU
        fragmentation, measured load) as (plugin, weight, pressure), and the sum of the
        static weights; None when none has weight > 0 and pressure > 0 (GPU
        fragmentation counts only while some GPU is free)."""
        fw = self.framework
        caps = fw.capabilities()
        if not caps.dynamic:
            return None
        used: list[tuple[DynamicScore, float, float]] = []
        for p in caps.dynamic:
            if p.term == "fragmentation" and not self._has_gpu:
                continue
            w = fw.weight_of(p, req.objective)
            if w > 0:
                level = self._pressure(p)
                if level > 0:  # else the term is 0 on every node
                    used.append((p, w, level))
        if not used:
            return None
        weights = fw.weights(req.objective)
        ws = sum(w for q in fw.scores if not caps.is_dynamic(q)
                 and q.lower_is_better and (w := weights.get(q.name, 0.0)) > 0)
        return used, ws

    def _pressure(self, plugin: DynamicScore) -> float:
        """``plugin.pressure(snap)``, kept while the snapshot's GPUs are as they were: GPU
        fragmentation's reads the free GPU units (an ``O(n)`` sum), which change only
        through :meth:`take`, :meth:`release` and :meth:`_best_of` (the assumption
        :attr:`changed` and the class bounds make too); measured load's reads no free
        capacity at all, so any plugin whose pressure reads only free GPUs and static
        node fields is kept exactly."""
        held = self._pressures.get(id(plugin))
        if held is not None and held[0] is plugin and held[1] == self._gpu_version:
            return held[2]
        level = float(plugin.pressure(self.snap))
        self._pressures[id(plugin)] = (plugin, self._gpu_version, level)
        return level

    def _fits(self, m: np.ndarray, cpu: float, mem: int, gpu: int,
              skip: np.ndarray | None = None) -> np.ndarray:
        s = self.snap
        fits: np.ndarray = (s.free_cpu[m] >= cpu) & (s.free_mem[m] >= mem)
        if gpu > 0:
            fits &= s.gpu_fit(gpu, m) if s.gpu_unit > 1 else s.free_gpu[m] >= gpu
        if skip is not None:
            fits &= ~skip[m]
        return fits

    def _refresh_bounds(self, c: int) -> None:
        assert self.classes is not None
        s, m = self.snap, self.classes.members[c]
        self._ub_cpu[c] = s.free_cpu[m].max()
        self._ub_mem[c] = s.free_mem[m].max()
        self._ub_gpu[c] = s.free_gpu[m].max()

    def _take(self, i: int, req: PlacementRequest) -> int:
        r = req.task.resources
        s = self.snap
        self.changed.append(i)
        s.free_cpu[i] -= r.cpu
        s.free_mem[i] -= r.memory
        s.free_gpu[i] -= r.gpu
        s.take_gpus(i, r.gpu)
        if r.gpu:
            self._gpu_version += 1
        return i

    def prefetch(self, requests: Sequence[PlacementRequest]) -> None:
        """Let the predictor evaluate the task classes of ``requests`` not yet cached over
        the node-class representatives at once (one vectorised call per target, e.g.
        :meth:`placement.learned.LearnedPredictor.prefetch`); a no-op for predictors
        without ``prefetch``."""
        assert self.classes is not None
        predictor = self.framework.predictor
        if not provides(predictor, Prefetches):
            return
        todo = [r.task for r in requests if task_class_key(r) not in self.cache]
        if todo:
            cast(Prefetches, predictor).prefetch(todo, self.classes.rep_snap)

    def assign_one(self, req: PlacementRequest) -> int:
        """The chosen node index (capacity deducted), or -1 when nothing fits."""
        for observe in self._observers:
            observe(req)
        i = self.choose(req)
        return self.take(i, req) if i >= 0 else -1

    def observe(self, req: PlacementRequest) -> None:
        """Show ``req`` to the plugins that learn from the batch (GPU fragmentation's
        task-type mix), as :meth:`assign_one` does before choosing."""
        for observe in self._observers:
            observe(req)

    def choose(self, req: PlacementRequest, skip: np.ndarray | None = None) -> int:
        """The node :meth:`assign_one` would take for ``req`` (-1 = none fits), without
        deducting anything; ``skip``: bool ``(n,)``, nodes not to consider (a retry's
        failed nodes). When dynamic terms (GPU fragmentation, measured load) took part,
        :attr:`last_dynamic` holds the candidates (else None)."""
        assert self.classes is not None
        self.last_dynamic = None
        cc = self.costs(req)
        self.last_costs = (req, cc)
        dyn = self._dynamic(req)
        if dyn is not None:
            used, w_static = dyn
            if (self.prune_dynamic and len(used) == 1
                    and used[0][0].term == "fragmentation" and req.task.resources.gpu <= 0):
                plugin, w, level = used[0]
                return self._frag_walk(req, cc, plugin, w, level, w_static, skip)
            if self._joint_applies(req, used):
                return self._joint_walk(req, cc, used, w_static, skip)
            return self._assign_dynamic(req, cc, used, w_static, skip=skip)
        r = req.task.resources
        cpu, mem, gpu = r.cpu - CPU_EPS, r.memory, r.gpu
        s = self.snap
        for c in cc.order:
            if self._ub_cpu[c] < cpu or self._ub_mem[c] < mem or self._ub_gpu[c] < gpu:
                continue
            m = self.classes.members[c]
            fits = self._fits(m, cpu, mem, gpu, skip)
            if self.best_fit:
                left = np.where(fits, s.free_cpu[m], np.inf)
                k = int(left.argmin())
            else:
                k = int(fits.argmax())
            if not fits[k]:
                if skip is None:
                    self._refresh_bounds(int(c))
                continue
            return int(m[k])
        return -1

    def fits_node(self, req: PlacementRequest, i: int) -> bool:
        """Whether node ``i`` passes ``req``'s static filters and has room for it now."""
        assert self.classes is not None
        r = req.task.resources
        return bool(np.isfinite(self.cost_of(req, i))) and bool(
            self._fits(np.array([i]), r.cpu - CPU_EPS, r.memory, r.gpu)[0])

    def take(self, i: int, req: PlacementRequest) -> int:
        """Deduct ``req``'s resources from node ``i``; returns ``i``."""
        return self._take(i, req)

    def _tightest(self, m: np.ndarray, k: int, gpu: int) -> np.ndarray:
        """The ``k`` fitting nodes of ``m`` with the least free GPU units (a GPU
        request) or least free cpu (otherwise): best-fit candidates."""
        if m.size <= k:
            return m
        s = self.snap
        key = s.free_gpu[m].astype(np.float64) if gpu > 0 else s.free_cpu[m]
        return m[np.argpartition(key, k - 1)[:k]]

    def _assign_dynamic(self, req: PlacementRequest, cc: ClassCosts,
                        dyns: list[tuple[DynamicScore, float, float]], w_static: float,
                        skip: np.ndarray | None = None, capped: bool = True) -> int:
        """Static class cost plus the dynamic terms over the fitting nodes (``capped``
        False: every fitting node of the band, whatever :attr:`dynamic_candidates`).

        A node's cost is ``(W_s·cost_class + Σ_p w_p·d_p) / (W_s + Σ_p w_p)`` with
        ``d_p = 1 − f / (x + f)``, ``x`` plugin ``p``'s raw cost minus its minimum over
        the candidates and ``f`` its floor — the framework's normalisation. Since
        ``d ∈ [0, 1]``, a class whose ``W_s·cost`` exceeds the first fitting class's by
        more than ``Σ w_p`` can never win: only the classes within that band are scanned
        (vectorised over their members). When those hold more than
        :attr:`dynamic_candidates` fitting nodes, each class contributes only its
        tightest ones (:meth:`_tightest`), so a decision costs ``O(C + candidates)``
        whatever the cluster size. Ties → least free cpu (best fit).
        """
        assert self.classes is not None
        r = req.task.resources
        cpu, mem, gpu = r.cpu - CPU_EPS, r.memory, r.gpu
        s = self.snap
        w_dyn = sum(w for _, w, _ in dyns)
        cand: list[np.ndarray] = []
        first: float | None = None
        # classes in cost order: the first with a fitting node fixes the band, whose
        # classes with room (by their bounds) then take one fit test together
        order = cc.order
        room = np.flatnonzero((self._ub_cpu[order] >= cpu) & (self._ub_mem[order] >= mem)
                              & (self._ub_gpu[order] >= gpu))
        members = self.classes.members
        k = 0
        while k < room.size and first is None:
            c = int(order[room[k]])
            m = members[c]
            fits = self._fits(m, cpu, mem, gpu, skip)
            k += 1
            if fits.any():
                first = float(cc.cost[c])
                cand.append(m[fits])
            elif skip is None:
                self._refresh_bounds(c)
        if first is not None and k < room.size:
            rest = room[k:]
            rest = rest[w_static * (cc.cost[order[rest]] - first) <= w_dyn]  # the band
        else:
            rest = room[:0]
        if rest.size:
            cls = order[rest]
            ms = [members[int(c)] for c in cls]
            szs = np.array([x.size for x in ms], dtype=np.int64)
            m = np.concatenate(ms)
            fits = self._fits(m, cpu, mem, gpu, skip)
            ends = np.cumsum(szs)
            starts = ends - szs
            hits = np.logical_or.reduceat(fits, starts)
            if skip is None:
                for c in cls[~hits]:
                    self._refresh_bounds(int(c))
            for b, e in zip(starts[hits].tolist(), ends[hits].tolist(), strict=True):
                cand.append(m[b:e][fits[b:e]])
        if not cand:
            return -1
        total_cand = sum(c.size for c in cand)
        if capped and self.dynamic_candidates is not None \
                and total_cand > self.dynamic_candidates:
            per = max(1, self.dynamic_candidates // len(cand))
            cand = [self._tightest(c, per, gpu) for c in cand]
        idx = np.concatenate(cand)
        static = cc.cost[self.classes.of[idx]]
        raws: dict[str, np.ndarray] = {}
        ds: dict[str, np.ndarray] = {}
        lazy = self._lazy_fragmentation(req, dyns)
        for plugin, _, pressure in dyns:
            if plugin is not lazy:
                raws[plugin.name] = self._dynamic_raw(plugin, req, idx, static, w_static,
                                                      w_dyn, pressure, alone=len(dyns) == 1)
                ds[plugin.name] = _normalised(plugin, raws[plugin.name])
        if lazy is not None:  # bounded by the others' terms, computed first
            raws[lazy.name] = self._bounded_growth(req, lazy, idx, static, dyns, ds, w_static)
            ds[lazy.name] = _normalised(lazy, raws[lazy.name])
        acc = w_static * static
        for plugin, w, _ in dyns:  # summed in plugin order, as without the bound
            acc = acc + w * ds[plugin.name]
        total = acc / (w_static + w_dyn)
        best = np.flatnonzero(total <= total.min() + 1e-12)
        k = int(best[np.argmin(s.free_cpu[idx[best]])]) if self.best_fit else int(best[0])
        self.last_dynamic = DynamicChoice(tuple(p for p, _, _ in dyns), idx, raws, ds, total)
        return int(idx[k])

    def _joint_applies(self, req: PlacementRequest,
                       dyns: list[tuple[DynamicScore, float, float]]) -> bool:
        """Whether :meth:`_joint_walk` places ``req``: a CPU-only request with
        :attr:`prune_dynamic` and :attr:`joint_bound` on, and dynamic terms that are
        :class:`~placement.framework.NodeDelta` ratio-to-best terms (measured load; at
        least one) and at most one GPU-fragmentation term (shift-normalised)."""
        if not (self.prune_dynamic and self.joint_bound) or req.task.resources.gpu > 0:
            return False
        local = frag = 0
        for plugin, _, _ in dyns:
            if provides(plugin, NodeDelta) and ratio_to_best(plugin):
                local += 1
            elif plugin.term == "fragmentation" and not ratio_to_best(plugin):
                frag += 1
            else:
                return False
        return local > 0 and frag <= 1

    def _node_table(self, plugin: DynamicScore) -> _NodeTable:
        """``plugin``'s :class:`_NodeTable`, synced with :attr:`changed`."""
        assert self.classes is not None
        held = self._tables.get(id(plugin))
        if held is None or held.plugin is not plugin:
            held = self._tables[id(plugin)] = _NodeTable(
                cast(NodeDelta, plugin), self.snap, self.classes, len(self.changed))
        else:
            held.sync(self.snap, self.classes, self.changed)
        return held

    def _joint_walk(self, req: PlacementRequest, cc: ClassCosts,
                    dyns: list[tuple[DynamicScore, float, float]], w_static: float,
                    skip: np.ndarray | None = None) -> int:
        """:meth:`_assign_dynamic` for a CPU-only request whose dynamic terms are measured
        load (any :class:`~placement.framework.NodeDelta`) and GPU fragmentation, bounded
        per node class together: the exhaustive evaluation's choice — every fitting node
        of the band, ``capped=False`` — and its :attr:`keep` best totals, evaluating few
        classes.

        A node's total is ``(W_s·cost_class + Σ_p w_p·d_p) / W`` (:meth:`_assign_dynamic`).
        Per node class a lower bound of it is the sum of each term's own lower bound,
        weighted as the framework weights the term:

        * a :class:`~placement.framework.NodeDelta` term ``x`` (ratio to the best,
          ``d = 1 − (low + f) / (x + f)``): ``low``, the least ``x`` over the band's
          fitting nodes, is found exactly from the per-class least values of the
          :class:`_NodeTable` (a class's least member usually fits; a class whose least
          one does not is scanned while its least value is below the ``low`` found), and
          ``x ≥`` the class's least value over all its members bounds ``d``. Valid
          because ``node_delta`` reads only the node itself and its free capacity changes
          only through :meth:`take`/:meth:`release` (the change log), or a restore that
          drops the tables (:meth:`_best_of`), and is the same for every request;
        * GPU fragmentation: a CPU-only request has ``ΔF ≥ 0`` and ``ΔF = 0`` on a node
          without a free GPU, so once such a node is among the fitting nodes of the band
          the term's minimum is 0 and ``d ≥ 0`` (bound 0 per class); within an evaluated
          class :meth:`~placement.framework.BoundsDelta.growth_bound` bounds it per node,
          and ``ΔF`` is computed only where that bound can still rank.

        Within a class the fitting nodes are resolved a chunk at a time by their total at
        ``ΔF = 0`` (a lower bound of it): with one load-like term, from the class's members
        sorted by that term (:class:`_NodeTable`; the total at ``ΔF = 0`` grows with it),
        stopping at the first member whose bound is beyond, so a class costs ``O(chunk)``;
        a run of members with equal values is taken at once, and of its members without
        a free GPU only the :attr:`keep` that rank first are evaluated
        (:meth:`_ranking_ties`: an idle class does not cost ``O(class)`` evaluations).
        Classes are evaluated by ascending bound (ties in the exhaustive order); the walk
        stops at the first whose bound is above both the best exact total found (plus
        the choice's 1e-12 tie band) and the :attr:`keep`-th best, by 1e-9 — such a class,
        and every later one, cannot hold the choice, a tied node, or a runner-up. The
        exact totals are computed as :meth:`_assign_dynamic` computes them (same
        normalisers, same order of summation), so ties break alike (least free cpu, then
        the exhaustive order). A fitting node of the band known at ``ΔF = 0`` — without a
        free GPU (a class's least member, or any member of a class without free GPU), or
        a class's fitting least member that :meth:`~placement.framework.ZeroDelta.unchanged`
        proves at 0 — is listed among the candidates with its exact total, so the term's
        minimum over them is 0 as in the exhaustive evaluation (the explanation reads
        it). When none is known (the fragmentation minimum is unknown) the request takes
        :meth:`_assign_dynamic`'s capped evaluation, the path before the walk: at most
        :attr:`dynamic_candidates` nodes, exhaustive only below that cap.
        Requests it does not cover (:meth:`_joint_applies`: a GPU request, whose ``ΔF``
        may be negative; a dynamic term neither load-like nor GPU fragmentation;
        :attr:`joint_bound` off) take :meth:`_assign_dynamic`'s capped evaluation.
        :attr:`last_dynamic` lists the nodes evaluated exactly, in the exhaustive order.
        """
        assert self.classes is not None
        r = req.task.resources
        cpu, mem, gpu = r.cpu - CPU_EPS, r.memory, r.gpu
        s, cl = self.snap, self.classes
        members = cl.members
        w_dyn = sum(w for _, w, _ in dyns)
        wsum = w_static + w_dyn
        keep = max(1, self.keep)
        locs = [(p, w, self._node_table(p)) for p, w, _ in dyns if provides(p, NodeDelta)]
        held: dict[int, np.ndarray] = {}  # class → its members' fit, this request

        def fitting(c: int) -> np.ndarray:
            f = held.get(c)
            if f is None:
                f = held[c] = self._fits(members[c], cpu, mem, gpu, skip)
            return f

        # the band of the exhaustive evaluation, as _assign_dynamic finds it
        order = cc.order
        room = np.flatnonzero((self._ub_cpu[order] >= cpu) & (self._ub_mem[order] >= mem)
                              & (self._ub_gpu[order] >= gpu))
        k = 0
        first: float | None = None
        head = locs[0][2].arg  # a member per class: when it fits, the class has a fit
        while k < room.size and first is None:
            c = int(order[room[k]])
            k += 1
            if self._fits(head[c:c + 1], cpu, mem, gpu, skip)[0] or fitting(c).any():
                first = float(cc.cost[c])
            elif skip is None:
                self._refresh_bounds(c)
        if first is None:
            return -1
        rest = room[k:]
        rest = rest[w_static * (cc.cost[order[rest]] - first) <= w_dyn]
        pos = np.concatenate([room[k - 1:k], rest])  # positions in cc.order
        band = order[pos]
        frag = next(((p, w, lv) for p, w, lv in dyns if not provides(p, NodeDelta)), None)
        zd = bd = None
        if frag is not None:
            zd = cast(ZeroDelta, frag[0]) if provides(frag[0], ZeroDelta) else None
            bd = cast(BoundsDelta, frag[0]) if (self.bound_growth and zd is not None
                                                and provides(frag[0], BoundsDelta)) else None
        lows: dict[str, float] = {}
        bound = w_static * cc.cost[band]
        zero = frag is None
        zero_at = -1  # a fitting node of the band known at ΔF = 0 (none needed without frag)
        heads: list[np.ndarray] = []  # the fitting least members, per load-like term
        for p, w, t in locs:  # each term's normaliser over the band's fitting nodes, exact
            least = np.maximum(t.low[band], 0.0)
            arg = t.arg[band]
            ok = self._fits(arg, cpu, mem, gpu, skip)
            low = float(least[ok].min()) if ok.any() else np.inf
            if not zero:  # a fitting node without a free GPU: ΔF = 0 there
                at0 = np.flatnonzero(ok & ~s.gpu_slots[arg].any(axis=1))
                if at0.size:
                    zero, zero_at = True, int(arg[at0[0]])
                else:
                    heads.append(arg[ok])
            unsure = np.flatnonzero(~ok & (least < low))
            for j in unsure[np.argsort(least[unsure], kind="stable")].tolist():
                if least[j] >= low:
                    break
                c = int(band[j])
                fits = fitting(c)
                if fits.any():
                    low = min(low, float(np.maximum(t.x[members[c][fits]], 0.0).min()))
            f = float(p.floor)
            lows[p.name] = low
            bound = bound + w * (1.0 - (low + f) / (least + f))
        if not zero:  # look for one in the classes without a free GPU
            for c in band[self._ub_gpu[band] <= 0].tolist():
                m = members[c]
                fits = fitting(c)
                at0 = np.flatnonzero(fits & ~s.gpu_slots[m].any(axis=1))
                if at0.size:
                    zero, zero_at = True, int(m[at0[0]])
                    break
        if not zero and zd is not None and heads:  # a fitting least member with a free
            cand0 = np.unique(np.concatenate(heads))  # GPU that the request leaves alone
            same = zd.unchanged(req, s, cand0)
            if same.any():
                zero, zero_at = True, int(cand0[np.flatnonzero(same)[0]])
        if not zero:  # the fragmentation minimum is unknown: the capped evaluation
            return self._assign_dynamic(req, cc, dyns, w_static, skip)
        bound = bound / wsum
        top = np.zeros(0)  # the least exact totals found so far, ascending, at most keep

        def beyond(least: np.ndarray) -> float:
            """The total above which a node cannot rank, given the least exact totals
            found (ascending)."""
            if not least.size:
                return np.inf
            kth = float(least[keep - 1]) if least.size >= keep else np.inf
            return max(float(least[0]) + 1e-12, kth) + 1e-9

        limit = np.inf
        parts: list[tuple[int, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray],
                          np.ndarray]] = []

        def chunks(c: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            """Class ``c``'s fitting nodes that can still rank, a chunk at a time by
            their total at ``ΔF = 0`` (a lower bound; exact where ``ΔF`` is 0), ascending:
            (nodes, that total × W). One load-like term: from the class's members sorted
            by it, stopping where the next one's bound is beyond :func:`beyond` (``O(chunk)``,
            not ``O(class)``); several: from all its fitting members."""
            base = w_static * cc.cost[c]
            width = 4 * keep
            if len(locs) == 1:
                p, w, t = locs[0]
                f, low = float(p.floor), lows[p.name]
                vals, nodes = t.sv[c], t.sn[c]
                b = 0
                while b < nodes.size:
                    lead = base + w * (1.0 - (low + f) / (max(float(vals[b]), 0.0) + f))
                    if lead / wsum > limit:
                        return  # sorted: no later member can rank
                    e = min(nodes.size, b + width)
                    width *= 4
                    tied = bool(vals[e - 1] == vals[b])
                    if tied:  # a run of equal values: all of it at once
                        e = int(np.searchsorted(vals, vals[b], "right"))
                    nd = nodes[b:e]
                    b = e
                    nd = nd[self._fits(nd, cpu, mem, gpu, skip)]
                    if tied and nd.size > keep:
                        nd = self._ranking_ties(nd, keep)
                    if nd.size:
                        rw = base + w * (1.0 - (low + f) / (np.maximum(t.x[nd], 0.0) + f))
                        keep_ = rw / wsum <= limit
                        yield nd[keep_], rw[keep_]
                return
            fits = fitting(c)
            if not fits.any():
                if skip is None:
                    self._refresh_bounds(c)
                return
            cand = members[c][fits]
            rest_w = np.full(cand.size, base)
            for p, w, t in locs:
                f = float(p.floor)
                rest_w = rest_w + w * (1.0 - (lows[p.name] + f)
                                       / (np.maximum(t.x[cand], 0.0) + f))
            sel = np.arange(cand.size)
            while sel.size:
                sel = sel[rest_w[sel] / wsum <= limit]
                if sel.size > width:
                    cut = np.partition(rest_w[sel], width - 1)[width - 1]
                    ch, sel = sel[rest_w[sel] <= cut], sel[rest_w[sel] > cut]
                else:
                    ch, sel = sel, sel[:0]
                width *= 4
                if ch.size:
                    yield cand[ch], rest_w[ch]

        def part(j: int, cand: np.ndarray, rf: np.ndarray
                 ) -> tuple[int, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray],
                            np.ndarray]:
            """The band's ``j``-th class's nodes ``cand`` (``rf``: their exact ``ΔF``)
            as :meth:`_assign_dynamic` evaluates them: (position in ``cc.order``, nodes,
            raw and normalised costs per term, totals)."""
            c = int(band[j])
            raws: dict[str, np.ndarray] = {}
            ds: dict[str, np.ndarray] = {}
            for p, _, t in locs:  # the terms as _assign_dynamic normalises them
                f = float(p.floor)
                raws[p.name] = x = t.x[cand]
                ds[p.name] = 1.0 - (lows[p.name] + f) / (np.maximum(x, 0.0) + f)
            if frag is not None:
                f = float(frag[0].floor)
                raws[frag[0].name] = rf
                ds[frag[0].name] = 1.0 - f / (rf + f)  # the term's minimum is 0
            acc = w_static * np.full(cand.size, cc.cost[c])
            for p, w, _ in dyns:  # summed in plugin order, as _assign_dynamic does
                acc = acc + w * ds[p.name]
            return int(pos[j]), cand, raws, ds, acc / wsum

        for j in np.lexsort((pos, bound)).tolist():
            if bound[j] > limit:
                break  # this class, and every later one, cannot rank
            c = int(band[j])
            done: list[np.ndarray] = []
            rfs: list[np.ndarray] = []
            for nd, rest_w in chunks(c):
                rf = np.zeros(nd.size)
                if frag is not None:
                    fp, fw, level = frag
                    f = float(fp.floor)
                    at = np.flatnonzero(s.gpu_slots[nd].any(axis=1))
                    if at.size:
                        if bd is not None:
                            same, lower = bd.growth_bound(req, s, nd[at], level)
                        elif zd is not None:
                            same, lower = zd.unchanged(req, s, nd[at]), np.zeros(at.size)
                        else:
                            same, lower = np.zeros(at.size, dtype=bool), np.zeros(at.size)
                        unk, lower = at[~same], lower[~same]
                        if unk.size:
                            sure = np.ones(nd.size, dtype=bool)
                            sure[unk] = False
                            lim = beyond(np.sort(np.concatenate(  # with the chunk's ΔF = 0
                                [top, rest_w[sure] / wsum]))[:keep])
                            low_tot = (rest_w[unk] + fw * (1.0 - f / (lower + f))) / wsum
                            need = low_tot <= lim
                            rf[unk[~need]] = np.inf
                            if need.any():
                                rf[unk[need]] = self._dynamic_delta(fp, req, nd[unk[need]],
                                                                    level)
                fin = np.isfinite(rf)
                nd, rf, rest_w = nd[fin], rf[fin], rest_w[fin]
                if frag is not None:
                    f = float(frag[0].floor)
                    tot = (rest_w + frag[1] * (1.0 - f / (rf + f))) / wsum
                else:
                    tot = rest_w / wsum
                top = np.sort(np.concatenate([top, tot]))[:keep]
                limit = beyond(top)
                done.append(nd)
                rfs.append(rf)
            if done:
                parts.append(part(j, np.concatenate(done), np.concatenate(rfs)))
        # the band's first class has a fitting node, and nothing is pruned before one is
        # evaluated exactly
        assert parts, "the joint walk evaluated no fitting node"
        if zero_at >= 0 and not any((x[1] == zero_at).any() for x in parts):
            # the node known at ΔF = 0, with its exact total: the fragmentation term's
            # minimum over the candidates is 0, as in the exhaustive evaluation (which
            # explanations read, Planner._dynamic_line); beyond the limit, it cannot rank
            j0 = int(np.flatnonzero(band == cl.of[zero_at])[0])
            parts.append(part(j0, np.array([zero_at], dtype=np.int64), np.zeros(1)))
        idx = np.concatenate([x[1] for x in parts])
        at_pos = np.concatenate([np.full(x[1].size, x[0]) for x in parts])
        perm = np.lexsort((idx, at_pos))  # the exhaustive order: class by class, node order
        idx = idx[perm]
        names = [p.name for p, _, _ in dyns]
        raw = {n: np.concatenate([x[2][n] for x in parts])[perm] for n in names}
        d = {n: np.concatenate([x[3][n] for x in parts])[perm] for n in names}
        total = np.concatenate([x[4] for x in parts])[perm]
        best = np.flatnonzero(total <= total.min() + 1e-12)
        k = int(best[np.argmin(s.free_cpu[idx[best]])]) if self.best_fit else int(best[0])
        self.last_dynamic = DynamicChoice(tuple(p for p, _, _ in dyns), idx, raw, d, total)
        return int(idx[k])

    def _ranking_ties(self, nd: np.ndarray, keep: int) -> np.ndarray:
        """Of fitting nodes ``nd`` of one node class with equal load-like values (a run of
        :class:`_NodeTable`), those that can rank (ascending): the ones with a free GPU,
        and of the others only the ``keep`` first by (free cpu, node index).

        Those others have the same exact total (same class cost, same load-like term,
        ``ΔF = 0`` without a free GPU), and a tie goes to the least free cpu, then the
        exhaustive order (node order within a class): the ``keep`` first of them precede
        every other in the choice and the runners-up alike. So ``O(run)`` once instead of
        evaluating every tied node (on an idle site, most of a class)."""
        s = self.snap
        zero = ~s.gpu_slots[nd].any(axis=1)
        if int(np.count_nonzero(zero)) <= keep:
            return nd
        z = nd[zero]
        z = z[np.lexsort((z, s.free_cpu[z]))[:keep]]
        out: np.ndarray = np.sort(np.concatenate([z, nd[~zero]]))
        return out

    def _lazy_fragmentation(self, req: PlacementRequest,
                            dyns: list[tuple[DynamicScore, float, float]]
                            ) -> DynamicScore | None:
        """The GPU-fragmentation term :meth:`_assign_dynamic` may bound
        (:meth:`_bounded_growth`): with another dynamic term beside it (measured load,
        as the control plane places), for a CPU-only request, with :attr:`prune_dynamic`
        and :attr:`bound_growth` on and a plugin offering
        :class:`~placement.framework.BoundsDelta`; else None."""
        if (len(dyns) < 2 or not (self.prune_dynamic and self.bound_growth)
                or req.task.resources.gpu > 0):
            return None
        for plugin, _, _ in dyns:
            if plugin.term == "fragmentation" and provides(plugin, BoundsDelta) \
                    and not ratio_to_best(plugin):
                return plugin
        return None

    def _bounded_growth(self, req: PlacementRequest, plugin: DynamicScore, idx: np.ndarray,
                        static: np.ndarray, dyns: list[tuple[DynamicScore, float, float]],
                        ds: dict[str, np.ndarray], w_static: float) -> np.ndarray:
        """GPU fragmentation's raw ``ΔF`` over the candidates ``idx`` of a CPU-only request
        beside other dynamic terms (``ds``: their normalised costs): exact wherever the
        node can be among the :attr:`keep` best totals, ``inf`` (normalised to 1) where it
        provably cannot.

        ``ΔF ≥ 0`` for a CPU-only request and ``ΔF = 0`` on a node without a free GPU or
        where :meth:`~placement.framework.ZeroDelta.unchanged` holds, so once such a node
        is among the candidates the term's minimum is 0 and ``d = 1 − f / (ΔF + f)``.
        :meth:`~placement.framework.BoundsDelta.growth_bound` bounds ``ΔF`` from below on
        the other GPU nodes; a node whose total with that bound is above the best total
        known (plus the choice's 1e-12 tie band) and the ``keep``-th best, by 1e-9, cannot
        rank, and its ``ΔF`` is not computed."""
        s = self.snap
        _, w, pressure = next(x for x in dyns if x[0] is plugin)
        raw = np.zeros(idx.size)
        has = s.gpu_slots[idx].any(axis=1)
        if not has.any():
            return raw
        at = np.flatnonzero(has)
        same, lower = cast(BoundsDelta, plugin).growth_bound(req, s, idx[at], pressure)
        unk = at[~same]
        if unk.size == 0:
            return raw
        if unk.size == idx.size:  # no node known at ΔF = 0: the minimum is unknown
            raw[unk] = self._dynamic_delta(plugin, req, idx[unk], pressure)
            return raw
        wsum = w_static + sum(x[1] for x in dyns)
        other = w_static * static
        for q, wq, _ in dyns:
            if q is not plugin:
                other = other + wq * ds[q.name]
        zero = np.ones(idx.size, dtype=bool)
        zero[unk] = False
        tot0 = other[zero] / wsum
        keep = max(1, self.keep)
        kth = float(np.partition(tot0, keep - 1)[keep - 1]) if tot0.size >= keep else np.inf
        f = float(plugin.floor)
        low = lower[~same]
        bound = (other[unk] + w * (1.0 - f / (low + f))) / wsum
        need = bound <= max(float(tot0.min()) + 1e-12, kth) + 1e-9
        raw[unk[~need]] = np.inf
        if need.any():
            raw[unk[need]] = self._dynamic_delta(plugin, req, idx[unk[need]], pressure)
        return raw

    def _groups(self, cc: ClassCosts) -> list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
        """``cc``'s feasible classes grouped by equal cost, in cost order: (cost, class
        indices, their sizes, their members concatenated in class order). Memoised per
        task class: a group is scanned with one vector test, not class by class."""
        held = self._group_memo.get(id(cc))
        if held is not None and held[0] is cc:
            return held[1]
        assert self.classes is not None
        out: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
        order = cc.order
        if order.size:
            cost = cc.cost[order]
            cuts = np.flatnonzero(np.diff(cost) != 0.0) + 1
            for part in np.split(order, cuts):
                ms = [self.classes.members[int(c)] for c in part]
                out.append((float(cc.cost[part[0]]), part,
                            np.array([m.size for m in ms], dtype=np.int64), np.concatenate(ms)))
        self._group_memo[id(cc)] = (cc, out)
        return out

    def _group_index(self, cls: np.ndarray, members: np.ndarray) -> _GroupIndex:
        """The :class:`_GroupIndex` of the group of classes ``cls`` (shared by every task
        class with that group), synced with :attr:`changed`."""
        assert self.classes is not None
        key = cls.tobytes()
        gi = self._gindex.get(key)
        if gi is None:
            gi = self._gindex[key] = _GroupIndex(self.snap, self.classes, cls, members,
                                                 len(self.changed))
        else:
            gi.sync(self.snap, self.classes, self.changed)
        return gi

    def _frag_walk(self, req: PlacementRequest, cc: ClassCosts, plugin: DynamicScore,
                   w_dyn: float, pressure: float, w_static: float,
                   skip: np.ndarray | None = None) -> int:
        """:meth:`_assign_dynamic` for a CPU-only request with GPU fragmentation the only
        dynamic term, with the term bounded per node class: the same choice, and the same
        :attr:`keep` best totals, computing ``ΔF`` on few nodes.

        The bound: a CPU-only request never lowers fragmentation (``ΔF ≥ 0``: less
        cpu/memory fits fewer pods of every type) and a node without a free GPU has
        ``ΔF = 0``. So once one candidate of the band is known at ``ΔF = 0`` the minimum
        the term is normalised by is 0 and a node's ``d`` is at least 0: the best total
        a class can reach is ``W_s·cost_class / W`` (a class without free GPU reaches it
        on every fitting node). Classes are walked in cost order and one is skipped —
        with every class after it — when that bound is above both the best total found
        (plus the choice's 1e-12 tie band) and the :attr:`keep`-th best. Within a class
        the fitting nodes are taken by least free cpu (the tie-break), ``ΔF`` computed a
        chunk at a time, until :attr:`keep` nodes at ``ΔF = 0`` are known: no node after
        them can rank before them. Until some ``ΔF = 0`` is known nothing is pruned (the
        minimum is unknown), so a band without one is evaluated in full.
        :attr:`last_dynamic` lists the nodes evaluated, in the exhaustive order.
        """
        assert self.classes is not None
        r = req.task.resources
        cpu, mem, gpu = r.cpu - CPU_EPS, r.memory, r.gpu
        s, cl = self.snap, self.classes
        w = w_static + w_dyn
        f = float(plugin.floor)
        keep = max(1, self.keep)
        seen: list[np.ndarray] = []
        raws: list[np.ndarray] = []
        tots = np.zeros(0)
        first: float | None = None
        zero = False
        zd = cast(ZeroDelta, plugin) if provides(plugin, ZeroDelta) else None
        bd = cast(BoundsDelta, plugin) if (self.bound_growth and zd is not None
                                           and provides(plugin, BoundsDelta)) else None
        # a node whose ΔF is above x_min has a total above its group's ΔF = 0 ones by more
        # than the choice's tie band (1e-12, and 2e-9 of margin), as gap_ok asks below
        band = (1e-12 + 2e-9) * w / w_dyn
        x_min = f * band / (1.0 - band) if band < 1.0 else np.inf
        # where ΔF is not 0 it is at least gap_x: such a node's total is above its
        # group's ΔF = 0 ones by more than the choice's tie band (then it is not computed
        # when keep nodes at or below that total are known)
        gap: list[bool] = []  # worked out when first needed (it reads the popularities)

        def gap_ok() -> bool:
            if not gap:
                x = zd.least_positive(req, s, pressure) if zd is not None else 0.0
                gap.append(x > 0 and w_dyn * (1.0 - f / (x + f)) / w > 1e-12 + 2e-9)
            return gap[0]

        for sc, cls, sizes, members in self._groups(cc):
            if first is not None and w_static * (sc - first) > w_dyn:
                break  # the band of the exhaustive evaluation ends
            if zero and tots.size:
                low = float(tots.min())
                kth = float(np.partition(tots, keep - 1)[keep - 1]) if tots.size >= keep \
                    else np.inf
                if w_static * sc / w > max(low + 1e-12, kth) + 1e-9:
                    break  # this group of classes, and every costlier one, cannot rank
            room = (self._ub_cpu[cls] >= cpu) & (self._ub_mem[cls] >= mem) \
                & (self._ub_gpu[cls] >= gpu)
            if not room.any():
                continue
            gpu_free = bool((self._ub_gpu[cls[room]] > 0).any())
            width = keep if not gpu_free else 32
            fit: _Fitting | None = None
            if self.index_groups and skip is None:  # the index: no pass over the members
                fit = _Fitting(self._group_index(cls, members), s, cpu, mem)
                fit.ensure(1)
                if not fit.nodes.size:
                    continue
                chunks = fit.chunks(width)
                first_chunk = next(chunks)
                cand = fit.nodes
                chunks = itertools.chain([first_chunk], chunks)
            else:
                m = members if room.all() else members[np.repeat(room, sizes)]
                fits = self._fits(m, cpu, mem, gpu, skip)
                if skip is None:  # classes with room by their bounds but no fitting node
                    hit = np.zeros(cl.count, dtype=bool)
                    hit[cl.of[m[fits]]] = True
                    for c in cls[room & ~hit[cls]]:
                        self._refresh_bounds(int(c))
                if not fits.any():
                    continue
                cand = m[fits]
                chunks = _least_first(s.free_cpu[cand], width)
            if first is None:
                first = sc
            raw = np.full(cand.size, np.inf)
            if not gpu_free:  # no free GPU in the group: ΔF = 0 on all, least free cpu first
                raw[next(chunks)[:keep]] = 0.0
                zero = True
            else:  # in tie-break order, until keep nodes at ΔF = 0 are known
                b = w_static * sc / w
                ahead = int(np.count_nonzero(tots <= b))  # totals no group member beats
                found = 0
                pending: list[np.ndarray] = []
                visited: list[np.ndarray] = []
                for ch in chunks:
                    if fit is not None and fit.nodes.size > cand.size:  # materialised more
                        cand = fit.nodes
                        raw = np.concatenate([raw, np.full(cand.size - raw.size, np.inf)])
                    visited.append(ch)
                    h = s.gpu_slots[cand[ch]].any(axis=1)
                    raw[ch[~h]] = 0.0
                    zk = np.flatnonzero(~h)  # nodes after the keep-th of these cannot rank
                    if zk.size >= keep - found:
                        h[zk[keep - found - 1]:] = False
                    big = np.zeros(ch.size, dtype=bool)
                    if zd is not None and h.any():  # provably 0 without computing it
                        sure = np.zeros(ch.size, dtype=bool)
                        if bd is not None:  # and provably above the tie band elsewhere
                            sure[h], lower = bd.growth_bound(req, s, cand[ch[h]], pressure)
                            big[h] = lower > x_min
                        else:
                            sure[h] = zd.unchanged(req, s, cand[ch[h]])
                        raw[ch[sure]] = 0.0
                        h &= ~sure
                    zk = np.flatnonzero(raw[ch] == 0.0)
                    if zk.size >= keep - found:
                        h[zk[keep - found - 1]:] = False
                    if h.any() and gap_ok():
                        big |= h
                    if (h & big).any():
                        pending.append(ch[h & big])  # ΔF ≥ the gap: decided below
                    if (h & ~big).any():
                        at = ch[h & ~big]
                        raw[at] = self._dynamic_delta(plugin, req, cand[at], pressure)
                    found += int(np.count_nonzero(raw[ch] == 0.0))
                    if found >= keep:
                        break
                # they may rank: compute them (also while no ΔF = 0 is known — the
                # totals ``ahead`` counts assume the minimum is 0)
                if pending and (ahead + found < keep or not (zero or found)):
                    at = np.concatenate(pending)
                    raw[at] = self._dynamic_delta(plugin, req, cand[at], pressure)
                seq = np.concatenate(visited)
                z = np.flatnonzero(raw[seq] == 0.0)
                if z.size >= keep:  # nodes after the keep-th ΔF = 0 one rank after it
                    raw[seq[int(z[keep - 1]) + 1:]] = np.inf
                zero = zero or z.size > 0
            done = np.isfinite(raw)
            seen.append(cand[done])
            raws.append(raw[done])
            d = 1.0 - f / (raw[done] + f)
            tots = np.concatenate([tots, (w_static * sc + w_dyn * d) / w])
        if not seen:
            return -1
        idx = np.concatenate(seen)
        raw = np.concatenate(raws)
        static = cc.cost[cl.of[idx]]
        d = _normalised(plugin, raw)
        total = (w_static * static + w_dyn * d) / w
        best = np.flatnonzero(total <= total.min() + 1e-12)
        k = int(best[np.argmin(s.free_cpu[idx[best]])]) if self.best_fit else int(best[0])
        self.last_dynamic = DynamicChoice((plugin,), idx, {plugin.name: raw},
                                          {plugin.name: d}, total)
        return int(idx[k])

    def _dynamic_raw(self, plugin: DynamicScore, req: PlacementRequest, idx: np.ndarray,
                     static: np.ndarray, w_static: float, w_dyn: float, pressure: float,
                     alone: bool) -> np.ndarray:
        """``plugin``'s raw cost over the candidates ``idx``. GPU fragmentation is 0 on a
        node without a free GPU (nothing to fragment) and, when it is the only dynamic
        term and candidates are capped (the path before :meth:`_frag_walk`), skipped
        (``inf``) where it cannot win (see the comment below); uncapped, every candidate
        is evaluated (the exhaustive evaluation)."""
        if plugin.term != "fragmentation":
            return self._dynamic_delta(plugin, req, idx, pressure)
        s = self.snap
        raw = np.zeros(idx.size)
        has = s.gpu_slots[idx].any(axis=1)  # no free GPU: nothing to fragment, ΔF = 0
        if (alone and self.cache_dynamic and self.dynamic_candidates is not None
                and req.task.resources.gpu <= 0 and has.any() and not has.all()):
            # A CPU-only request never lowers fragmentation (ΔF ≥ 0: less cpu/memory fits
            # fewer pods of every type), and a candidate without free GPU has ΔF = 0, so
            # min ΔF = 0 and a node's total is at least its d = 0 value. Nodes whose
            # d = 0 total is above the best d = 0 total of the GPU-less candidates can
            # never be chosen: ΔF is not computed for them (d = 1 stands in, which keeps
            # them out of the tie band as well).
            lb = (w_static * static + w_dyn * 0.0) / (w_static + w_dyn)
            zero = float(lb[~has].min())
            need = has & (lb <= zero + 1e-12)
            raw[has & ~need] = np.inf
            has = need
        if has.any():
            raw[has] = self._dynamic_delta(plugin, req, idx[has], pressure)
        return raw

    def _dynamic_delta(self, plugin: DynamicScore, req: PlacementRequest, idx: np.ndarray,
                       pressure: float | None) -> np.ndarray:
        """The plugin's ``delta`` over ``idx``; through its per-snapshot memo when it
        declares one (:class:`~placement.framework.CachedDelta`, e.g. GPU fragmentation's
        exact :class:`~placement.plugins.fragmentation.FragmentationCache`; off when
        :attr:`cache_dynamic` is False)."""
        if self.cache_dynamic and provides(plugin, CachedDelta):
            held = self._memo.get(id(plugin))
            if held is None or held[0] is not plugin:
                held = self._memo[id(plugin)] = (
                    plugin, cast(CachedDelta, plugin).delta_cache(self.snap))
            return held[1].delta(req, idx, pressure)
        return np.asarray(plugin.delta(req, self.snap, idx), dtype=np.float64)

    def release(self, i: int, cpu: float, memory: int, gpu: int) -> None:
        """Give capacity back to node ``i`` (a run ended); raises the class bounds."""
        assert self.classes is not None
        s = self.snap
        self.changed.append(i)
        s.free_cpu[i] += cpu
        s.free_mem[i] += memory
        s.free_gpu[i] += gpu
        s.give_gpus(i, gpu)
        if gpu:
            self._gpu_version += 1
        c = self.classes.of[i]
        self._ub_cpu[c] = max(self._ub_cpu[c], s.free_cpu[i])
        self._ub_mem[c] = max(self._ub_mem[c], s.free_mem[i])
        self._ub_gpu[c] = max(self._ub_gpu[c], s.free_gpu[i])

    def assign(self, requests: Sequence[PlacementRequest], order: str = "size") -> np.ndarray:
        """Node index per request (input order), -1 where nothing fits.

        ``order``: ``size`` = largest first (as :func:`placement.place`); ``regret`` =
        the requests that lose most if denied their best class first (regret = cost of
        the second-best feasible class − cost of the best; one class only → +inf), ties
        largest first — the regret heuristic for generalized assignment (Martello & Toth,
        "Knapsack Problems", 1990, §7.3); ``best`` = both from the same capacity, keeping
        the one of higher :meth:`value` (ties → size).
        """
        for req in requests:  # the batch is known demand: every order sees all of it
            for observe in self._observers:
                observe(req)
        if order == "best":
            return self._best_of(requests)
        self.prefetch(requests)
        out = np.full(len(requests), -1, dtype=np.int64)
        for i in self.ordering(requests, order):
            out[i] = self.assign_one(requests[i])
        return out

    def ordering(self, requests: Sequence[PlacementRequest], order: str = "size") -> list[int]:
        """The order in which :meth:`assign` takes ``requests`` (indices): ``size`` or
        ``regret`` (see :meth:`assign`); raises ValueError for another name."""
        idx = size_order(requests)
        if order == "size":
            return idx
        if order != "regret":
            raise ValueError(f"order must be size or regret, not {order!r}")
        rank = {i: k for k, i in enumerate(idx)}
        regret = []
        for req in requests:
            cc = self.costs(req)
            c = cc.cost[cc.order[:2]]
            regret.append(float(c[1] - c[0]) if c.size > 1 else np.inf)
        return sorted(idx, key=lambda i: (-regret[i], rank[i]))

    def value(self, requests: Sequence[PlacementRequest], nodes: np.ndarray) -> float:
        """Σ over placed requests of (1 − cost): the batch objective in score form."""
        return float(sum(1.0 - self.cost_of(r, int(j))
                         for r, j in zip(requests, nodes, strict=True) if j >= 0))

    def _best_of(self, requests: Sequence[PlacementRequest]) -> np.ndarray:
        """Both orders from the same starting capacity; keep the higher :meth:`value`."""
        s = self.snap
        saved = (s.free_cpu.copy(), s.free_mem.copy(), s.free_gpu.copy(),
                 self._ub_cpu.copy(), self._ub_mem.copy(), self._ub_gpu.copy(),
                 s.gpu_slots.copy())
        by_size = self.assign(requests, "size")
        after_size = (s.free_cpu.copy(), s.free_mem.copy(), s.free_gpu.copy(),
                      self._ub_cpu.copy(), self._ub_mem.copy(), self._ub_gpu.copy(),
                      s.gpu_slots.copy())
        (s.free_cpu[:], s.free_mem[:], s.free_gpu[:], self._ub_cpu[:], self._ub_mem[:],
         self._ub_gpu[:], s.gpu_slots[:]) = saved
        self._gpu_version += 1
        self._gindex.clear()  # restored without the change log
        self._tables.clear()
        by_regret = self.assign(requests, "regret")
        if self.value(requests, by_regret) > self.value(requests, by_size):
            return by_regret
        (s.free_cpu[:], s.free_mem[:], s.free_gpu[:], self._ub_cpu[:], self._ub_mem[:],
         self._ub_gpu[:], s.gpu_slots[:]) = after_size
        self._gpu_version += 1
        self._gindex.clear()
        self._tables.clear()
        return by_size

    def node_costs(self, req: PlacementRequest) -> np.ndarray:
        """The objective of ``req`` on every node as the snapshot stands, shape ``(n,)``:
        the static class cost, combined with the dynamic terms (measured load, GPU
        fragmentation) evaluated over the nodes that fit now, as :meth:`choose` combines
        them (``inf`` where the request does not fit). What the MILP minimises."""
        assert self.classes is not None
        s = self.snap
        cost = self.costs(req).cost[self.classes.of]
        r = req.task.resources
        ok = np.isfinite(cost) & s.fits(r)
        out = np.full(s.n, np.inf)
        idx = np.flatnonzero(ok)
        dyn = self._dynamic(req)
        if dyn is None or not idx.size:
            out[idx] = cost[idx]
            return out
        used, w_static = dyn
        w_dyn = sum(w for _, w, _ in used)
        acc = w_static * cost[idx]
        for plugin, w, pressure in used:
            raw = self._dynamic_raw(plugin, req, idx, cost[idx], w_static, w_dyn, pressure,
                                    alone=False)
            acc = acc + w * _normalised(plugin, raw)
        out[idx] = acc / (w_static + w_dyn)
        return out

    def cost_of(self, req: PlacementRequest, node: int) -> float:
        """The objective of ``req`` on node index ``node`` (``inf`` when infeasible)."""
        assert self.classes is not None
        return float(self.costs(req).cost[self.classes.of[node]])


# ---------------------------------------------------------------- class-cached predictor


def node_classes(snap: Snapshot) -> NodeClasses:
    """The snapshot's :class:`NodeClasses`, built once and kept in its memo."""
    return snap.memo("node_classes", lambda: NodeClasses(snap))


class ClassCachedPredictor:
    """Wraps a :class:`~placement.predict.Predictor` so it runs once per node class.

    ``runtime_s``/``energy_j``/``queue_wait_s`` evaluate the inner predictor over the
    snapshot's class representatives (``C`` rows, not ``n``) and broadcast by class —
    exact, since nodes of a class agree on every feature a predictor reads. ``transfer``
    and ``fallback`` pass through. Used by the control plane so a learned model never
    runs per node.
    """

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner

    @property
    def version(self) -> str:
        return str(self.inner.version)

    def runtime_s(self, task: Task, snap: Snapshot) -> np.ndarray:
        cl = node_classes(snap)
        out: np.ndarray = self.inner.runtime_s(task, cl.rep_snap)[cl.of]
        return out

    def energy_j(self, task: Task, snap: Snapshot, runtime: np.ndarray) -> np.ndarray:
        cl = node_classes(snap)
        out: np.ndarray = self.inner.energy_j(task, cl.rep_snap, runtime[cl.reps])[cl.of]
        return out

    def queue_wait_s(self, task: Task, snap: Snapshot) -> np.ndarray:
        if not provides(self.inner, PredictsQueueWait):
            return snap.queue_wait_s
        cl = node_classes(snap)
        out: np.ndarray = np.asarray(
            cast(PredictsQueueWait, self.inner).queue_wait_s(task, cl.rep_snap))[cl.of]
        return out

    def prefetch(self, tasks: Sequence[Task], snap: Snapshot) -> None:
        """The inner predictor's ``prefetch`` over the class representatives, if any."""
        if provides(self.inner, Prefetches):
            cast(Prefetches, self.inner).prefetch(tasks, node_classes(snap).rep_snap)

    def transfer(self, sources: Sequence[DataSource], snap: Snapshot
                 ) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.transfer(sources, snap)

    def fallback(self, task: Task, snap: Snapshot, i: int) -> str | None:
        if not provides(self.inner, ExplainsFallback):
            return None
        cl = node_classes(snap)
        return cast(ExplainsFallback, self.inner).fallback(task, cl.rep_snap, int(cl.of[i]))


# ---------------------------------------------------------------- naive baseline


def naive_assign(requests: Sequence[PlacementRequest], snap: Snapshot,
                 framework: Framework | None = None) -> np.ndarray:
    """The naive baseline: for every request, rescan every node with plain numpy.

    Per request: the static filters, a capacity test and the score plugins of
    ``framework`` over all ``n`` nodes
    (the predictor runs over all nodes), the same linear objective as
    :class:`BatchAssigner`, argmin (ties → lowest index), deduct. No classes, no cache.
    Returns node indices (input order), -1 where nothing fits. Mutates ``snap``.
    """
    fw = framework or default_framework()
    out = np.full(len(requests), -1, dtype=np.int64)
    for i in size_order(requests):
        req = requests[i]
        state = CycleState(fw.predictor)
        static = np.ones(snap.n, dtype=bool)
        for f in fw.filters:
            if f.name != NodeResourcesFit.name:
                static &= f.filter(req, snap, state).mask
        fits = static & snap.fits(req.task.resources)
        if not fits.any():
            continue
        caps = fw.capabilities()
        raw = {p.name: np.asarray(p.score(req, snap, state, static), dtype=np.float64)
               for p in fw.scores if p.lower_is_better and not caps.is_dynamic(p)}
        floors = {p.name: p.floor for p in fw.scores}
        weights = fw.weights(req.objective)
        cost = linear_cost(raw, floors, weights, static)
        cost[~fits] = np.inf
        ws = sum(w for n, w in weights.items() if n in raw and w > 0)
        for p in fw.scores:
            wd = weights[p.name]
            if caps.is_dynamic(p) and wd > 0 and snap.gpu_slots.any():
                dyn = np.asarray(p.score(req, snap, state, fits), dtype=np.float64)
                d = 1.0 - p.floor / (dyn + p.floor)
                cost = np.where(fits, (ws * np.where(fits, cost, 0.0) + wd * d) / (ws + wd),
                                np.inf)
                ws += wd
        k = int(np.argmin(cost))
        snap.assume(k, req.task.resources)
        out[i] = k
    return out


__all__ = [
    "BatchAssigner",
    "DynamicChoice",
    "ClassCachedPredictor",
    "ClassCosts",
    "NodeClasses",
    "evaluate",
    "linear_cost",
    "naive_assign",
    "node_classes",
    "static_key",
    "static_mask",
    "size_order",
    "task_class_key",
]
