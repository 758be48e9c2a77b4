"""The placement entry point: :func:`plan` places a batch of requests on a snapshot.

Every caller places through it — the reconciler, the workflow preview, migration's
make-before-break move and the benchmark — so the placements the product makes are the
ones the benchmark measures. It runs the node-class :class:`~placement.batch.BatchAssigner`
(static costs per task class × node class, assume-and-deduct, the GPU-fragmentation
term per request) and minimises the objective the MILP (:mod:`placement.milp`) solves
exactly: :meth:`~placement.batch.BatchAssigner.cost_of`, ``0`` = the best node in every
term. Requests are taken largest first (gpu, cpu, memory descending; ties in input
order), or by regret (``order="regret"``).

A retry prefers another node: a request's ``avoid`` lists the nodes where earlier
attempts of its task failed, and the best feasible node *not* in it is chosen when
there is one (a soft preference, not a filter: when every feasible node is in
``avoid``, the best of them is used, and the reasons say so).

Explanations (``explain=True``) are built for the chosen node only, from the assigner's
class tables: per-plugin scores ``100 · (min + floor) / (v + floor)`` over the
statically feasible node classes (the terms of the objective, so ``total`` = ``100 ·
(1 − cost)``), the predictions of the chosen node's class, one reason per weighted
plugin, the filter counts of the snapshot as it is when the request is placed, and up to
:data:`ALTERNATIVES` runners-up in cost order. A request that fits nowhere gets the
filters' reasons ("no node fits: 0/11 nodes available: 9 site not allowed …").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from continuum.model import PlacementDecision, Prediction
from placement.assign import ALTERNATIVES, Outcome, PlacementRequest
from placement.batch import (
    BatchAssigner,
    ClassCosts,
    DynamicChoice,
    NodeClasses,
    node_classes,
    static_key,
)
from placement.framework import (
    MAX_SCORE,
    DescribesCandidates,
    Feasibility,
    FilterResult,
    Framework,
    ScorePlugin,
    default_framework,
    ratio_to_best,
)
from placement.plugins.resources import (
    REASON_CPU,
    REASON_GPU,
    REASON_MEMORY,
    NodeResourcesFit,
)
from placement.predict import CycleState, ExplainsFallback, provides
from placement.snapshot import CPU_EPS, TIERS, Snapshot

MAX_LINES = 4096
"""Static reason lists a :class:`Planner` keeps ((task class, node class, classes with a
feasible node) triples), all dropped beyond."""
MAX_COUNTS = 256
"""Capacity-verdict tables a :class:`Planner` keeps (request shapes; one ``(n,)`` array
each), all dropped beyond."""


@dataclass
class _ShapeFit:
    """``NodeResourcesFit``'s verdict for one request shape: ``res`` per node (-1 = fits,
    0/1/2 = lacks cpu/memory/gpu, its reasons' order), ``per_class`` members per node class
    by verdict, shape ``(C, 4)`` (column ``res + 1``), ``synced``: how much of the
    assigner's change log is in."""

    res: np.ndarray
    per_class: np.ndarray
    synced: int


@dataclass
class _Counts:
    """The filters' attributed verdict for one request as the snapshot stands:
    ``reasons`` (attribution order), ``counts`` per code + 1 (``counts[0]`` = feasible
    nodes), ``per_class`` feasible members per node class, ``open`` node classes no static
    filter rejects (their members are feasible where ``res`` is -1), ``res``
    ``NodeResourcesFit``'s verdict per node."""

    reasons: list[str]
    counts: np.ndarray
    per_class: np.ndarray
    open: np.ndarray
    res: np.ndarray

    def filtered(self) -> dict[str, int]:
        """Reason → nodes attributed to it, as :attr:`Feasibility.filtered`."""
        out: dict[str, int] = {}
        for k in np.flatnonzero(self.counts[1:]).tolist():
            name = self.reasons[k]
            out[name] = out.get(name, 0) + int(self.counts[k + 1])
        return out


class Planner:
    """One snapshot's assigner and the explanation of its choices.

    ``snapshot`` is mutated (assume-and-deduct; pass ``snapshot.copy()`` for a what-if);
    ``requests``: the batch to come, if known — nodes that hold a cached copy of one of
    its inputs get a node class of their own, so their zero transfer is exact. Building
    costs ``O(n)`` (the node classes); :meth:`place_one` then costs ``O(C)`` per new
    task class plus the walk of :class:`~placement.batch.BatchAssigner`, and, with an
    explanation, one pass of the filters over the ``n`` nodes.
    """

    def __init__(self, snapshot: Snapshot, framework: Framework | None = None,
                 requests: Sequence[PlacementRequest] = ()) -> None:
        fw = framework or default_framework()
        cached = frozenset(x for r in requests for s in r.sources for x in s.nodes)
        self.snap = snapshot
        self.framework = fw
        # no cached copies among the batch's inputs: the snapshot's own classes (its memo,
        # kept by copies and by the applier's SnapshotCache between batches)
        classes = NodeClasses(snapshot, cached) if cached else node_classes(snapshot)
        self.assigner = BatchAssigner(snapshot, fw, classes=classes)
        self._static: dict[tuple[object, ...], dict[str, FilterResult]] = {}
        self._codes: dict[tuple[object, ...], tuple[list[str], np.ndarray, np.ndarray, int]] = {}
        self._shapes: dict[tuple[float, int, int], _ShapeFit] = {}
        self._count_plans: dict[tuple[object, ...], tuple[
            np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self._weights: dict[tuple[float, ...], dict[str, float]] = {}
        self.lean_explanations = True
        """Keep the static scores and reasons per (task class, node class, classes with a
        feasible node) and let a dynamic term describe itself from the candidates
        (:class:`DescribesCandidates`); False rebuilds them for every decision and
        describes dynamic terms over ``n``-sized arrays (the path before, for the
        benchmark's side-by-side; the same explanations)."""
        self._scores: dict[int, tuple[ClassCosts, dict[int, dict[str, float]]]] = {}
        self._lines: dict[tuple[int, int, bytes],
                          tuple[ClassCosts, list[tuple[ScorePlugin, str | None]]]] = {}

    def place_one(self, req: PlacementRequest, *, explain: bool = True, pin: int | None = None,
                  note: str = "") -> Outcome:
        """Place ``req`` (capacity deducted) and return its :class:`Outcome`.

        ``pin``: a node index to take if it still fits (the MILP's choice in ``quality``
        mode), with ``note`` as its reason. ``explain=False`` leaves reasons, scores,
        filter counts and runners-up empty (node, site, tier, total and predictions are
        still set). Never raises for "does not fit": that is ``decision=None`` and a
        reason.
        """
        a, snap = self.assigner, self.snap
        a.observe(req)
        a.keep = 1 + ALTERNATIVES if explain else 1  # the runners-up shown, exact
        extra: list[str] = []
        if pin is not None and a.fits_node(req, pin):
            j = pin
            a.last_dynamic = None
            if note:
                extra.append(note)
        else:
            j = a.choose(req)
        if req.avoid and j >= 0 and snap.ids[j] in req.avoid:
            failed = snap.ids[j]
            skip = np.zeros(snap.n, dtype=bool)
            skip[[snap.index[x] for x in req.avoid if x in snap.index]] = True
            k = a.choose(req, skip)
            if k < 0:
                if pin is None or j != pin:
                    a.choose(req)  # the tables of the choice kept
                extra.append(f"retry on {failed} again, where an earlier attempt failed: "
                             "no other feasible node")
            else:
                j = k
                extra = [f"retry avoids {failed}, where an earlier attempt failed"]
        if j < 0:
            return Outcome(req.key, None, self._unschedulable(req))
        decision = self._decision(req, j, extra, explain)
        a.take(j, req)
        return Outcome(req.key, decision)

    def _filters(self, req: PlacementRequest) -> Feasibility:
        """All filters over the snapshot as it is now; the static ones (all but
        ``NodeResourcesFit``, which reads free capacity) run once per static key."""
        fw = self.framework
        key = static_key(req)
        known = self._static.get(key)
        if known is None:
            state = fw.new_state()
            known = self._static[key] = {
                f.name: f.filter(req, self.snap, state) for f in fw.filters
                if f.name != NodeResourcesFit.name}
        return fw.run_filters(req, self.snap, fw.new_state(), known)

    def _class_codes(self, req: PlacementRequest, key: tuple[object, ...]
                     ) -> tuple[list[str], np.ndarray, np.ndarray, int]:
        """Per static key: the reasons in attribution order (filters in plugin order, each
        filter's reasons in its order, ``NodeResourcesFit``'s three in its place), the
        index of the first static reason rejecting each node class among the filters
        before ``NodeResourcesFit`` and after it (``(C,)``, -1 = none), and where its
        reasons start (``key``: ``static_key(req)``). The static filters read no free
        capacity and the nodes of a class agree on everything they read
        (:class:`~placement.batch.NodeClasses`, as the assigner's static mask assumes), so
        they run on the class representatives."""
        held = self._codes.get(key)
        if held is not None:
            return held
        fw, cl = self.framework, self.assigner.classes
        assert cl is not None
        state = fw.new_state()
        reasons: list[str] = []
        pre = np.full(cl.count, -1, dtype=np.int64)
        post = np.full(cl.count, -1, dtype=np.int64)
        at, codes = -1, pre
        for plugin in fw.filters:
            if plugin.name == NodeResourcesFit.name:
                at, codes = len(reasons), post
                reasons += [REASON_CPU, REASON_MEMORY, REASON_GPU]
                continue
            for rej in plugin.filter(req, cl.rep_snap, state).rejections:
                codes[(codes < 0) & rej.mask] = len(reasons)
                reasons.append(rej.reason)
        held = self._codes[key] = (reasons, pre, post, at)
        return held

    def _res_codes(self, req: PlacementRequest, idx: np.ndarray | None = None) -> np.ndarray:
        """``NodeResourcesFit``'s verdict on each node of ``idx`` (all by default) as
        :meth:`Framework.run_filters` attributes it: -1 = fits, 0/1/2 = lacks
        cpu/memory/gpu (the first lacking)."""
        r, s = req.task.resources, self.snap
        if idx is None:
            idx = np.arange(s.n)
        out: np.ndarray = np.where(s.free_cpu[idx] + CPU_EPS < r.cpu, 0,
                                   np.where(s.free_mem[idx] < r.memory, 1,
                                            np.where(s.gpu_fit(r.gpu, idx), -1, 2))
                                   ).astype(np.int8)
        return out

    def _shape_fit(self, req: PlacementRequest) -> _ShapeFit:
        """The capacity verdict of ``req``'s shape, kept per shape and refreshed only on
        the nodes the assigner changed since (one placement changes one node)."""
        r = req.task.resources
        key = (float(r.cpu), int(r.memory), int(r.gpu))
        a, cl = self.assigner, self.assigner.classes
        assert cl is not None
        st = self._shapes.get(key)
        if st is None:
            if len(self._shapes) >= MAX_COUNTS:
                self._shapes.clear()
            res = self._res_codes(req)
            per = np.bincount(cl.of * 4 + res + 1, minlength=cl.count * 4
                              ).reshape(cl.count, 4)
            st = self._shapes[key] = _ShapeFit(res, per, len(a.changed))
        elif st.synced < len(a.changed):
            # a few nodes: a set beats np.unique (which also imports numpy.ma on first use)
            u = np.array(sorted(set(a.changed[st.synced:])), dtype=np.int64)
            old, new = st.res[u], self._res_codes(req, u)
            # usually one node: scalar updates beat ufunc.at
            for i, o, c in zip(u.tolist(), old.tolist(), new.tolist(), strict=True):
                if o != c:
                    k = int(cl.of[i])
                    st.per_class[k, o + 1] -= 1
                    st.per_class[k, c + 1] += 1
            st.res[u] = new
            st.synced = len(a.changed)
        return st

    def _filter_counts(self, req: PlacementRequest) -> _Counts:
        """The filters' verdict on the snapshot as it stands, from the static verdict per
        node class (per static key) and the capacity verdict per request shape: the
        explanation's filter counts in ``O(C + changes)`` rather than a pass of every
        filter over the ``n`` nodes."""
        key = static_key(req)
        reasons, pre, post, at = self._class_codes(req, key)
        plan = self._count_plans.get(key)
        if plan is None:  # what does not change with capacity, per static key
            m = len(reasons) + 1
            rejected, late = pre >= 0, post >= 0  # late: a static filter after capacity
            assert self.assigner.classes is not None
            sizes = np.array([x.size for x in self.assigner.classes.members], dtype=np.int64)
            base = np.bincount(pre[rejected] + 1, weights=sizes[rejected], minlength=m
                               ).astype(np.int64)  # every member: the class's reason
            plan = self._count_plans[key] = (
                base, ~rejected, (~rejected) & late, post[(~rejected) & late] + 1,
                (~rejected) & ~late, m)
        base, free, late, late_code, open_, m = plan
        sf = self._shape_fit(req)
        per = sf.per_class
        counts = base.copy()
        counts[at + 1:at + 4] += per[free, 1:].sum(axis=0)
        if late_code.size:
            counts += np.bincount(late_code, weights=per[late, 0], minlength=m
                                  ).astype(np.int64)
        feasible = np.where(open_, per[:, 0], 0)
        counts[0] = feasible.sum()
        return _Counts(reasons, counts, feasible, open_, sf.res)

    def _unschedulable(self, req: PlacementRequest) -> str:
        feas = self._filters(req)
        if not feas.mask.any():
            return feas.explain(self.snap.n)
        k = int(feas.mask.sum())  # the filters pass nodes the GPU packing cannot use
        return (f"no node fits: {k}/{self.snap.n} nodes pass the filters but none has "
                f"{req.task.resources.gpu} GPU free on one node with the cpu and memory. "
                "To fix: request fewer GPUs, or wait for running work to finish")

    def _decision(self, req: PlacementRequest, j: int, extra: list[str],
                  explain: bool) -> PlacementDecision:
        a, snap, fw = self.assigner, self.snap, self.framework
        cl = a.classes
        assert cl is not None
        c = int(cl.of[j])
        last = a.last_costs
        cc = last[1] if last is not None and last[0] is req else a.costs(req)
        o = req.objective
        okey = (o.time, o.latency, o.energy, o.data)
        weights = self._weights.get(okey)
        if weights is None:
            weights = self._weights[okey] = fw.weights(o)
        dyn = a.last_dynamic
        dnames = {q.name for q in dyn.plugins} if dyn is not None else set()
        at = -1
        if dyn is not None:
            hit = np.flatnonzero(dyn.idx == j)
            at = int(hit[0]) if hit.size else -1
        cost = float(dyn.total[at]) if dyn is not None and at >= 0 else float(cc.cost[c])
        p = cc.predictions
        # built by this code from typed arrays: no validation needed (model_construct)
        predicted = Prediction.model_construct(
            runtime_s=float(p.runtime_s[c]),
            queue_wait_s=float(p.queue_wait_s[c]),
            transfer_s=float(p.transfer_s[c]),
            completion_s=float(p.completion_s[c]),
            latency_ms=None if p.rtt_ms is None else float(p.rtt_ms[c]),
            energy_j=float(p.energy_j[c]),
            bytes_moved=int(p.bytes_moved[c]),
        )
        node = snap.nodes[j]
        fields: dict[str, Any] = {
            "node": node.id, "site": node.site, "tier": TIERS[int(snap.tier[j])],
            "weights": dict(weights), "total": round(MAX_SCORE * (1.0 - cost), 2),
            "predicted": predicted}
        if not explain:
            return PlacementDecision.model_construct(
                **fields, scores={}, reasons=[], filtered={}, alternatives=[],
                model_version=fw.predictor.version, feasible_nodes=0)
        scores = dict(self._class_scores(cc, c))
        for dp in fw.capabilities().dynamic:
            d = (float(dyn.d[dp.name][at]) if dyn is not None and at >= 0
                 and dp.name in dnames else 0.0)
            scores[dp.name] = round(MAX_SCORE * (1.0 - d), 2)

        counts = self._filter_counts(req)
        reasons: list[str] = []
        for plugin, line in self._static_lines(req, cc, c, counts, weights):
            if line is None and dyn is not None and plugin.name in dnames and at >= 0:
                line = self._dynamic_line(req, plugin, dyn, at)
            if line:
                reasons.append(line)
        feasible = int(counts.counts[0])
        reasons.append(f"{feasible} of {snap.n} nodes feasible")
        reasons.extend(extra)
        version = fw.predictor.version
        if provides(fw.predictor, ExplainsFallback) and version != "analytic-v1":
            why = cast(ExplainsFallback, fw.predictor).fallback(req.task, snap, j)
            if why:
                reasons.append(why)
                version = "analytic-v1"
        return PlacementDecision.model_construct(
            **fields, scores=scores, reasons=reasons, filtered=counts.filtered(),
            alternatives=self._runners_up(cc, j, counts), model_version=version,
            feasible_nodes=feasible)

    def _class_scores(self, cc: ClassCosts, c: int) -> dict[str, float]:
        """The static plugins' scores of node class ``c`` for ``cc``'s task class,
        ``100 · (min + floor) / (v + floor)`` over the statically feasible classes:
        constants of (task class, node class), kept."""
        held = self._scores.get(id(cc)) if self.lean_explanations else None
        if held is None or held[0] is not cc:
            held = self._scores[id(cc)] = (cc, {})
        out = held[1].get(c)
        if out is None:
            out = held[1][c] = {}
            for name, raw in cc.raw.items():
                v = np.maximum(raw, 0.0)
                f = cc.floors[name]
                out[name] = round(float(MAX_SCORE * (v[cc.feasible].min() + f) / (v[c] + f)),
                                  2)
        return out

    def _static_lines(self, req: PlacementRequest, cc: ClassCosts, c: int, counts: _Counts,
                      weights: dict[str, float]) -> list[tuple[ScorePlugin, str | None]]:
        """Per weighted score plugin in plugin order, its reason when it is a static one
        (``describe`` over the representatives, among the node classes with a feasible
        node now and ``c``), else None. A static plugin's line reads only the task class
        (``cc``), ``c`` and which classes have a feasible node, so it is kept per those
        (at most :data:`MAX_LINES` entries, all dropped beyond)."""
        fitting = counts.per_class > 0
        fitting[c] = True
        key = (id(cc), c, fitting.tobytes())
        held = self._lines.get(key) if self.lean_explanations else None
        if held is not None and held[0] is cc:
            return held[1]
        if len(self._lines) >= MAX_LINES:
            self._lines.clear()
        cl = self.assigner.classes
        assert cl is not None
        fw = self.framework
        rep_state = CycleState(fw.predictor, {"predictions": cc.predictions})
        out: list[tuple[ScorePlugin, str | None]] = []
        for plugin in fw.scores:
            if weights[plugin.name] <= 0:
                continue
            line = (plugin.describe(req, cl.rep_snap, rep_state, cc.raw[plugin.name], c,
                                    fitting) if plugin.name in cc.raw else None)
            out.append((plugin, line))
        self._lines[key] = (cc, out)
        return out

    def _dynamic_line(self, req: PlacementRequest, plugin: ScorePlugin, dyn: DynamicChoice,
                      at: int) -> str | None:
        """A dynamic plugin's reason over the candidates of the choice (``at``: the chosen
        node's position among them): through :class:`DescribesCandidates` when the
        plugin offers it (only the candidates read), else ``describe`` over ``n``-sized
        arrays."""
        snap = self.snap
        raw = dyn.raw[plugin.name]
        ok = np.isfinite(raw)  # in the form the plugin's score has
        vals = raw[ok] - raw[ok].min() if not ratio_to_best(plugin) else raw[ok]
        if self.lean_explanations and provides(plugin, DescribesCandidates):
            return cast(DescribesCandidates, plugin).describe_candidates(
                req, snap, dyn.idx[ok], vals, int(np.count_nonzero(ok[:at])))
        full = np.zeros(snap.n)
        shown = np.zeros(snap.n, dtype=bool)
        full[dyn.idx[ok]] = vals
        shown[dyn.idx[ok]] = True
        return plugin.describe(req, snap, self.framework.new_state(), full, int(dyn.idx[at]),
                               shown)

    def _runners_up(self, cc: ClassCosts, j: int, counts: _Counts) -> list[dict[str, object]]:
        """Up to :data:`ALTERNATIVES` other feasible nodes, best first, with their totals:
        the fragmentation term's candidates when it decided, else the classes in cost
        order (within a class, node order)."""
        a, snap = self.assigner, self.snap
        out: list[dict[str, object]] = []
        dyn = a.last_dynamic
        if dyn is not None:
            top = ALTERNATIVES + 1
            tot = dyn.total
            fc = snap.free_cpu[dyn.idx]  # ties as the choice breaks them: least free cpu
            sel = (np.flatnonzero(tot <= np.partition(tot, top - 1)[top - 1])
                   if tot.size > top else np.arange(tot.size))
            ranked = sel[np.lexsort((sel, fc[sel], tot[sel]))][:top]  # j among them or not
            for i, t in zip(dyn.idx[ranked].tolist(), tot[ranked].tolist(), strict=True):
                if i != j:
                    out.append({"node": snap.ids[i], "total": round(MAX_SCORE * (1.0 - t), 2)})
            return out[:ALTERNATIVES]
        assert a.classes is not None
        for cls in cc.order:
            if not counts.open[cls]:
                continue
            m = a.classes.members[cls]
            for i in m[counts.res[m] < 0]:
                if int(i) == j:
                    continue
                out.append({"node": snap.ids[int(i)],
                            "total": round(MAX_SCORE * (1.0 - float(cc.cost[cls])), 2)})
                if len(out) >= ALTERNATIVES:
                    return out
        return out


def plan(requests: Sequence[PlacementRequest], snapshot: Snapshot,
         framework: Framework | None = None, *, explain: bool = True,
         order: str = "size") -> list[Outcome]:
    """Place ``requests`` on ``snapshot``; one :class:`Outcome` per request, in input order.

    Mutates ``snapshot``'s free arrays (assume-and-deduct); pass ``snapshot.copy()`` for
    a what-if preview. ``order``: ``size`` (largest first), ``regret`` or ``best`` (see
    :meth:`~placement.batch.BatchAssigner.assign`); raises ValueError for another.
    In the framework's ``quality`` mode a batch of at most ``quality_max_pairs``
    (request, node) pairs is solved exactly by the MILP first and each request takes the
    MILP's node while it still fits. Never raises for "does not fit": that is an Outcome
    with ``decision=None`` and a reason such as ``"no node fits: 0/15 nodes available: 12
    nodes lack cpu (need 64, largest free 32); 3 wrong tier (allowed: edge; these are
    cloud). To fix: ..."``.
    """
    planner = Planner(snapshot, framework, requests)
    a = planner.assigner
    for req in requests:  # the batch is known demand: the fragmentation mix sees all of it
        a.observe(req)
    a.prefetch(requests)
    if order == "best":  # the better of size and regret order, on a copy; then taken
        best = BatchAssigner(snapshot.copy(), planner.framework, classes=a.classes
                             ).assign(requests, "best")
        pins, note = {i: int(j) for i, j in enumerate(best) if j >= 0}, ""
        # the pinned first: then the rest meet the capacity assign("best") left them
        idx = sorted(a.ordering(requests, "size"), key=lambda i: i not in pins)
    else:
        idx = a.ordering(requests, order)
        pins, note = _quality_pins(requests, planner)
    outcomes: dict[int, Outcome] = {}
    for i in idx:
        outcomes[i] = planner.place_one(requests[i], explain=explain, pin=pins.get(i),
                                        note=note)
    return [outcomes[i] for i in range(len(requests))]


def _quality_pins(requests: Sequence[PlacementRequest], planner: Planner
                  ) -> tuple[dict[int, int], str]:
    """In ``quality`` mode, the MILP's node per request (empty when not used)."""
    fw, snap = planner.framework, planner.snap
    if fw.mode != "quality" or not requests or len(requests) * snap.n > fw.quality_max_pairs:
        return {}, ""
    from placement.milp import solve

    result = solve(requests, planner.assigner, fw.quality_time_limit_s)
    if result.status == "failed":
        return {}, ""
    pins = {i: int(j) for i, j in enumerate(result.nodes) if j >= 0}
    proof = "optimal" if result.status == "optimal" else "best found within the time limit"
    return pins, (f"chosen by the exact MILP over the batch of {len(requests)} "
                  f"(HiGHS, {proof}, {result.seconds * 1e3:.0f} ms)")


__all__ = ["Planner", "plan"]
