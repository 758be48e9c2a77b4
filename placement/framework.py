"""The filter/score framework (kube-scheduler's, translated and vectorised over nodes).

A :class:`Framework` holds an ordered list of filter plugins, a list of score plugins
and the :class:`~placement.predict.Predictor` they share. For one request it:

1. runs every filter over all nodes (each returns a boolean mask, True = feasible, and
   the rejected nodes grouped by reason); a rejected node is *attributed* to the first
   filter, in plugin order, and the first reason within it, that rejects it, so the
   per-reason counts add up to the number of rejected nodes;
2. runs every score plugin over the feasible nodes and normalises its raw values to
   0..100 (100 = best) — see :func:`normalize`;
3. combines them: ``total = Σ w_p · s_p / Σ w_p``, with ``w_p`` the workflow
   objective's weight of the term the plugin serves (time, latency, energy, data), or
   the plugin's own ``weight`` for a term outside the objective (GPU fragmentation).

Outcomes are values: a node that does not fit is a False in a mask with a reason, never
an exception.

Optional plugin methods are declared protocols, never looked up by name:
:class:`DynamicScore` (a term that reads free capacity: ``delta``, ``pressure``;
:class:`RatioToBest` says how the assigner normalises it),
:class:`CachedDelta` (an exact per-snapshot memo of that delta), :class:`ZeroDelta`
(where that delta is provably 0), :class:`NodeDelta` (a delta kept per node, bounded per
node class), :class:`ObservesBatch`
(``observe``: learns from every request of a batch) and :class:`Weighted` (``weight``, for
a term outside the objective). The predictor's optional methods are declared in
:mod:`placement.predict` (``PredictsQueueWait``, ``Prefetches``, ``ExplainsFallback``).
:meth:`Framework.capabilities` resolves which plugin has which, once per plugin list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, cast, runtime_checkable

import numpy as np

from continuum.model import Objective
from placement.predict import AnalyticPredictor, CycleState, Predictor

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

Term = Literal["time", "latency", "energy", "data", "fragmentation"]
"""The objective term a score plugin serves: a field of ``continuum.model.Objective``,
or ``fragmentation`` (weighted by the plugin's own ``weight``)."""
OBJECTIVE_TERMS = frozenset({"time", "latency", "energy", "data"})

MAX_SCORE = 100.0


@dataclass(frozen=True)
class Rejection:
    """Nodes one filter rejects for one reason.

    ``mask`` is True where rejected. ``describe(attributed)`` renders a detail for the
    nodes finally attributed to this reason (e.g. "need 64, largest free 32"); it is
    called only when an explanation is needed. ``fix`` tells the user what to change.
    """

    reason: str
    mask: np.ndarray
    describe: Callable[[np.ndarray], str] | None = None
    fix: str = ""


@dataclass(frozen=True)
class FilterResult:
    """A filter's verdict: ``mask`` True = feasible, ``rejections`` for the rest."""

    mask: np.ndarray
    rejections: list[Rejection] = field(default_factory=list)

    @classmethod
    def from_rejections(cls, n: int, rejections: list[Rejection]) -> FilterResult:
        """Feasible = rejected for no reason; reasons with no rejected node are dropped."""
        mask = np.ones(n, dtype=bool)
        for r in rejections:
            mask &= ~r.mask
        return cls(mask, [r for r in rejections if r.mask.any()])


class FilterPlugin(Protocol):
    """A hard rule: which nodes can run the request at all."""

    name: str

    def filter(self, req: PlacementRequest, snap: Snapshot, state: CycleState) -> FilterResult: ...


class ScorePlugin(Protocol):
    """A soft preference among feasible nodes.

    ``score`` returns raw values of shape ``(n,)`` (only entries under ``mask`` are
    read). ``lower_is_better`` says whether raw values are costs; ``floor`` is the cost
    difference (in the raw unit) below which nodes are considered equally good.
    ``describe(raw, chosen, mask)`` renders one human-readable reason for the decision.
    """

    name: str
    term: Term
    lower_is_better: bool
    floor: float

    def score(
        self, req: PlacementRequest, snap: Snapshot, state: CycleState, mask: np.ndarray
    ) -> np.ndarray: ...

    def describe(
        self, req: PlacementRequest, snap: Snapshot, state: CycleState, raw: np.ndarray,
        chosen: int, mask: np.ndarray,
    ) -> str | None: ...


@runtime_checkable
class DynamicScore(ScorePlugin, Protocol):
    """A score plugin whose cost reads free capacity (GPU fragmentation): the batch
    assigner evaluates it per request over the fitting nodes, never caches it per task
    class, and leaves it out of the static linear objective."""

    def delta(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        """Raw cost of placing ``req`` on each node of ``idx``, shape ``(len(idx),)``
        (lower is better); the nodes fit the request."""
        ...

    def pressure(self, snap: Snapshot) -> float:
        """How much the term matters now, in [0, 1]; 0 = not at all (the assigner then
        skips it and the static order decides)."""
        ...


@runtime_checkable
class RatioToBest(Protocol):
    """A :class:`DynamicScore` whose ``delta`` the batch assigner normalises as a ratio
    to the best candidate, ``1 − (min + floor) / (x + floor)``, as the framework
    normalises its ``score`` (measured load). Without it ``delta`` is first shifted so
    the best candidate is 0, ``1 − floor / (x − min + floor)`` (GPU fragmentation, whose
    ``ΔF`` may be negative and whose ``score`` is ``ΔF − min ΔF``)."""

    ratio_to_best: bool


def ratio_to_best(plugin: object) -> bool:
    """Whether ``plugin`` is a :class:`RatioToBest` that asks for it (``ratio_to_best``
    True); the protocol check answered once per type (a data-protocol ``isinstance``
    costs microseconds and is asked per decision)."""
    kind = type(plugin)
    known = _RATIO.get(kind)
    if known is None:
        known = _RATIO[kind] = isinstance(plugin, RatioToBest)
    return known and bool(cast(RatioToBest, plugin).ratio_to_best)


_RATIO: dict[type, bool] = {}


class DeltaCache(Protocol):
    """An exact memo of a :class:`DynamicScore`'s ``delta`` over one snapshot."""

    def delta(self, req: PlacementRequest, idx: np.ndarray,
              pressure: float | None = None) -> np.ndarray:
        """Exactly ``plugin.delta(req, snap, idx)``; ``pressure`` the plugin's
        ``pressure(snap)`` if the caller has it."""
        ...


@runtime_checkable
class CachedDelta(Protocol):
    """A :class:`DynamicScore` that can memoise its ``delta`` per snapshot (same values,
    less work); the batch assigner uses it unless ``cache_dynamic`` is False."""

    def delta_cache(self, snap: Snapshot) -> DeltaCache:
        """A new memo of ``delta`` over ``snap`` (it follows ``snap``'s free arrays)."""
        ...


@runtime_checkable
class ZeroDelta(Protocol):
    """A :class:`DynamicScore` that can tell, cheaper than ``delta``, nodes where its
    ``delta`` is exactly 0 (GPU fragmentation for a CPU-only request: the batch
    assigner's per-class bound then skips computing it there)."""

    def unchanged(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        """Bool ``(len(idx),)``: True where ``delta(req, snap, idx)`` is provably 0;
        False where unsure."""
        ...

    def least_positive(self, req: PlacementRequest, snap: Snapshot, pressure: float) -> float:
        """A lower bound of ``delta`` on every node where :meth:`unchanged` is False
        (``pressure``: the plugin's, for this snapshot); 0 when none is known."""
        ...


@runtime_checkable
class BoundsDelta(Protocol):
    """A :class:`ZeroDelta` that also bounds ``delta`` from below where it is not 0 (GPU
    fragmentation for a CPU-only request): the batch assigner's per-class bound then
    leaves uncomputed the nodes that provably rank after enough ``delta = 0`` ones."""

    def growth_bound(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray,
                     pressure: float) -> tuple[np.ndarray, np.ndarray]:
        """``(same, lower)``, bool and float ``(len(idx),)``: ``same`` as ``unchanged``;
        ``lower`` a lower bound of ``delta`` (0 where ``same`` or none is known), for the
        plugin's ``pressure`` of ``snap``."""
        ...


@runtime_checkable
class NodeDelta(Protocol):
    """A :class:`DynamicScore` whose ``delta`` is the same for every request and, at a
    node, reads only that node — its static fields and its own free capacity (measured
    load). The batch assigner then keeps it per node, refreshing only the nodes whose free
    capacity it changed, and bounds it per node class by the least over the class's
    members: the joint class walk (:meth:`placement.batch.BatchAssigner._joint_walk`),
    which needs it finite and normalised as a :class:`RatioToBest`."""

    def node_delta(self, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        """``delta(req, snap, idx)`` for any ``req``, shape ``(len(idx),)``, finite."""
        ...


@runtime_checkable
class DescribesCandidates(Protocol):
    """A :class:`DynamicScore` that renders its reason from the candidates a choice
    evaluated alone (no ``n``-sized arrays): :class:`placement.plan.Planner` asks it
    instead of ``describe`` (GPU fragmentation)."""

    def describe_candidates(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray,
                            raw: np.ndarray, at: int) -> str | None:
        """``describe``'s line with ``idx`` the candidate node indices ``(k,)``, ``raw``
        their raw cost in the form the plugin's ``score`` has ``(k,)``, ``at`` the chosen
        node's position in ``idx``."""
        ...


@runtime_checkable
class ObservesBatch(Protocol):
    """A plugin that learns from the requests it will see (e.g. the task-type mix of
    GPU fragmentation): the batch assigner calls ``observe`` for every request of a batch
    before placing any, and before each single placement."""

    def observe(self, req: PlacementRequest) -> None: ...


@runtime_checkable
class Weighted(Protocol):
    """A score plugin with its own weight (for a term outside the workflow's objective,
    such as ``fragmentation``); without it such a term weighs 1."""

    weight: float


@dataclass(frozen=True)
class ScoreCapabilities:
    """Which score plugins of a :class:`Framework` have which optional capability.

    ``plugins``: the score plugins resolved (identity); ``dynamic``: the
    :class:`DynamicScore` ones in plugin order; ``observers``: the :class:`ObservesBatch`
    ones; ``weighted``: per plugin, itself if :class:`Weighted` else None.
    """

    plugins: tuple[ScorePlugin, ...]
    dynamic: tuple[DynamicScore, ...]
    observers: tuple[ObservesBatch, ...]
    weighted: tuple[Weighted | None, ...]

    @classmethod
    def of(cls, plugins: Sequence[ScorePlugin]) -> ScoreCapabilities:
        return cls(tuple(plugins),
                   tuple(p for p in plugins if isinstance(p, DynamicScore)),
                   tuple(p for p in plugins if isinstance(p, ObservesBatch)),
                   tuple(p if isinstance(p, Weighted) else None for p in plugins))

    def is_dynamic(self, plugin: ScorePlugin) -> bool:
        """True if ``plugin`` is one of the :class:`DynamicScore` plugins."""
        return any(plugin is d for d in self.dynamic)


def normalize(raw: np.ndarray, lower_is_better: bool, floor: float) -> np.ndarray:
    """Map raw values of the feasible nodes to 0..100, 100 = best.

    Costs (lower is better): ratio to the best, ``100 · (min + floor) / (x + floor)``.
    Benefits (higher is better): ``100 · (x + floor) / (max + floor)`` (kube-scheduler's
    default normalisation, with the floor). The ratio form is scale-free and, unlike
    min-max, does not blow a negligible difference (0.5 ms vs 0.6 ms) up to 0 vs 100;
    ``floor`` (> 0) keeps it finite at zero cost. Equal raw values all score 100.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0:
        return raw
    x = np.maximum(raw, 0.0)
    out: np.ndarray = (MAX_SCORE * (x.min() + floor) / (x + floor) if lower_is_better
                       else MAX_SCORE * (x + floor) / (x.max() + floor))
    return out


@dataclass(frozen=True)
class Feasibility:
    """All filters' verdict for one request.

    ``mask``: feasible nodes. ``filtered``: reason → count of nodes attributed to it.
    ``attributed``: the rejections with their attributed masks, in plugin order.
    """

    mask: np.ndarray
    filtered: dict[str, int]
    attributed: list[tuple[Rejection, np.ndarray]]

    def explain(self, n: int) -> str:
        """'0/15 nodes fit: 12 lack cpu (need 64, largest free 32); 3 …. To fix: …'."""
        if n == 0:
            return "no node fits: the snapshot has no nodes (register a site or wait for inventory)"
        parts, fixes = [], []
        for rej, att in sorted(self.attributed, key=lambda ra: -int(ra[1].sum())):
            count = int(att.sum())
            detail = rej.describe(att) if rej.describe else ""
            parts.append(f"{count} {rej.reason}" + (f" ({detail})" if detail else ""))
            if rej.fix and rej.fix not in fixes:
                fixes.append(rej.fix)
        msg = f"no node fits: 0/{n} nodes available: " + "; ".join(parts)
        if fixes:
            msg += ". To fix: " + "; or ".join(fixes)
        return msg


@dataclass
class Framework:
    """Filter plugins (in order), score plugins and the predictor they share."""

    filters: Sequence[FilterPlugin]
    scores: Sequence[ScorePlugin]
    predictor: Predictor = field(default_factory=AnalyticPredictor)
    mode: Literal["fast", "quality"] = "fast"
    """``fast``: greedy, largest first. ``quality``: batches with at most
    :attr:`quality_max_pairs` (request, node) pairs are solved exactly by the MILP of
    :mod:`placement.milp` first, and the greedy pass then follows its choices."""
    quality_max_pairs: int = 20_000
    quality_time_limit_s: float = 2.0
    _capabilities: ScoreCapabilities | None = field(default=None, init=False, repr=False,
                                                    compare=False)

    def capabilities(self) -> ScoreCapabilities:
        """The score plugins' optional capabilities, resolved once per plugin list (a
        protocol ``isinstance`` costs microseconds; this is asked per request)."""
        caps = self._capabilities
        plugins = tuple(self.scores)
        # tuple == compares identical elements by identity first (in C): cheap when unchanged
        if caps is None or caps.plugins != plugins:
            caps = self._capabilities = ScoreCapabilities.of(plugins)
        return caps

    def new_state(self) -> CycleState:
        return CycleState(self.predictor)

    def run_filters(
        self, req: PlacementRequest, snap: Snapshot, state: CycleState,
        known: Mapping[str, FilterResult] | None = None,
    ) -> Feasibility:
        """Every filter over ``snap``, attributed as the module docstring says.

        ``known``: filter name → its result for this request and snapshot, already
        computed (e.g. the static filters, memoised per task class); those are not run.
        """
        mask = np.ones(snap.n, dtype=bool)
        remaining = np.ones(snap.n, dtype=bool)
        filtered: dict[str, int] = {}
        attributed: list[tuple[Rejection, np.ndarray]] = []
        for plugin in self.filters:
            result = (known[plugin.name] if known is not None and plugin.name in known
                      else plugin.filter(req, snap, state))
            mask &= result.mask
            for rej in result.rejections:
                att = rej.mask & remaining
                remaining &= ~rej.mask
                count = int(att.sum())
                if count:
                    filtered[rej.reason] = filtered.get(rej.reason, 0) + count
                    attributed.append((rej, att))
        return Feasibility(mask, filtered, attributed)

    def weights(self, objective: Objective) -> dict[str, float]:
        """Plugin name → weight of its term in ``objective`` (a term outside it: the
        plugin's own :class:`Weighted` weight, else 1)."""
        own = self.capabilities().weighted
        return {p.name: float(getattr(objective, p.term)) if p.term in OBJECTIVE_TERMS
                else (1.0 if w is None else float(w.weight))
                for p, w in zip(self.scores, own, strict=True)}

    def weight_of(self, plugin: ScorePlugin, objective: Objective) -> float:
        """``weights(objective)[plugin.name]`` for one plugin of this framework, without
        building the dict (the batch assigner asks it per request)."""
        if plugin.term in OBJECTIVE_TERMS:
            return float(getattr(objective, plugin.term))
        caps = self.capabilities()
        for p, w in zip(caps.plugins, caps.weighted, strict=True):
            if p is plugin:
                return 1.0 if w is None else float(w.weight)
        raise ValueError(f"{plugin.name} is not a score plugin of this framework")


def default_framework(predictor: Predictor | None = None, *,
                      fragmentation_weight: float | None = None) -> Framework:
    """Constraints, resources and SLO filters; completion, latency, energy, locality and
    GPU fragmentation scores (``fragmentation_weight``: that plugin's weight, default
    :data:`placement.plugins.fragmentation.DEFAULT_WEIGHT`; 0 switches it off, which
    trades GPU packing for decision throughput — see bench/RESULTS.md)."""
    from placement.plugins import (
        completion,
        constraints,
        energy,
        fragmentation,
        latency,
        locality,
        resources,
    )

    return Framework(
        filters=[constraints.NodeConstraints(), resources.NodeResourcesFit(),
                 latency.SloLatency()],
        scores=[completion.CompletionTime(), latency.SloLatency(), energy.Energy(),
                locality.DataLocality("wan_bytes"),
                fragmentation.GpuFragmentation(fragmentation.DEFAULT_WEIGHT
                                               if fragmentation_weight is None
                                               else fragmentation_weight)],
        predictor=predictor or AnalyticPredictor(),
    )
