"""GpuFragmentation: prefer the node whose expected GPU fragmentation grows least.

After Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with
Fragmentation Gradient Descent", USENIX ATC 2023 (FGD), §3–4. For a node ``n`` and a
task type ``m`` (cpu, memory, gpu request), the GPU units of ``n`` that ``m`` could not
use are fragments:

* ``m`` does not fit on ``n`` (too little cpu, memory or GPU), or ``m`` asks for no GPU:
  every free GPU unit of ``n`` is a fragment;
* ``m`` fits and is fractional (less than one GPU): the free units of each GPU holding
  less than ``m``'s request are fragments;
* ``m`` fits and asks for whole GPUs: the free units of partly used GPUs are fragments.

The node's fragmentation w.r.t. the workload is ``F_n = Σ_m p_m · frag_n(m)`` with
``p_m`` the popularity of task type ``m``. The score of a request on a node is the
*growth* ``ΔF = F_n(after placing it) − F_n(before)`` (in GPUs), lower is better —
FGD's "fragmentation gradient descent". Where the request's GPU share lands on the node
follows :meth:`placement.snapshot.Snapshot.take_gpus` (best-fit GPU).

The workload distribution ``p`` is, unless given (:attr:`GpuFragmentation.workload`),
learned online from the requests this plugin has scored (each request key counted
once, the :data:`MAX_TYPES` most frequent (cpu, memory, gpu, static constraints) types
kept) — the paper takes it from the target workload; here it comes only from work
already seen.

**Fill-up extension** (``fill=True``, the default). FGD asks whether *one* pod of type
``m`` fits; a 96-core GPU host that loses 10 cores to a CPU-only pod still fits one GPU
pod, so FGD sees no fragmentation, yet its last GPUs will lack cores. Here a type's
fragments are the free GPU units left over after the node is filled with as many pods
of that type as its free GPUs, cpu and memory allow — FGD's cases are the special case
of one pod. On the Alibaba trace (bench/RESULTS.md) FGD's own measure left 431 pods
unplaced, the fill-up measure 149.

**CPU/memory stranding** (``strand``, default :data:`STRAND_WEIGHT`). The fill-up
measure fills a node with one task type at a time, each seeing *all* of the node's free
cpu and memory; a GPU host whose cores go to CPU-only pods keeps fitting every type
alone until the last cores go, while the *mix* of GPU pods that will arrive needs cores
and memory beside each GPU. So ``F_n`` also counts the GPUs the node's cpu and memory
can no longer feed at the workload's ratio:
``S_n = P_gpu · (G_n − min(G_n, C_n / κ_cpu, M_n / κ_mem)) / unit`` with ``G_n`` the
node's free GPU units, ``C_n``/``M_n`` its free cpu/memory, ``κ_cpu = Σ p_m c_m /
Σ p_m g_m`` and ``κ_mem = Σ p_m mem_m / Σ p_m g_m`` (cores and bytes per GPU unit over
the GPU task types) and ``P_gpu = Σ p_m`` over them; ``F_n += strand · S_n``. This is
the resource-ratio view of multi-resource packing (Tetris, Grandl et al., SIGCOMM 2014:
a machine whose resources are left out of the demand's proportions strands the rest)
applied to FGD's fragments. ``S_n`` never decreases when a CPU-only pod takes cpu or
memory, is 0 on a node without a free GPU and is a continuous function of cpu — so a
CPU-only request may now raise ``F_n`` by an arbitrarily small amount:
:meth:`GpuFragmentation.least_positive` gives no gap while it is on, and
:meth:`GpuFragmentation.unchanged` also compares ``S_n``. On the Alibaba trace in trace
order it left 123 pods unplaced where the fill-up measure alone left 147, at a higher
GPU allocation (bench/RESULTS.md).

**Pods, not GPUs** (``pods=True``, the default). FGD counts fragments in GPUs, so a
type's fragments weigh by the GPUs they leave idle: keeping an 8-GPU host whole for a
type that is 0.5 % of the pods outweighs leaving room for several fractional pods.
Scheduled pods are what fails, so here each type's fragments are counted in the pods of
that type they could have held: ``F_n = Σ_m q_m · frag_n(m)`` with ``q_m = p_m · unit /
size_m`` (:func:`type_weights`; ``size_m`` the units one pod of ``m`` takes: its request
when fractional, its whole GPUs otherwise, one GPU for a CPU-only type, whose
fragments — all free GPUs — are the same on every node a request can take), and
``S_n`` over the mean size of a GPU pod. With the fill-up measure ``q_m · frag_n(m) =
p_m · (idle_n / size_m − count_n(m))``: the pods of ``m`` the node's free GPUs would
hold unfragmented, less those it holds. A request takes the same GPUs on every node, so
the choice is decided by ``−Σ_m p_m · Δcount_n(m)``: the expected pods it blocks.
Every entry of :func:`frag_matrix` is as before (only the weights change), so
:class:`FragmentationCache` stays exact, a CPU-only request still never lowers ``F_n``,
and with :attr:`~GpuFragmentation.strand` off its least growth is ``pressure · min_m
p_m`` (one pod). On the Alibaba trace in trace order it fails 113 pods where GPUs as the
unit fail 123 (1,348 vs 1,442 on the ``gpuspec33`` list) at weight 0.5 (the default
then), 73 vs 91 (752 vs 820) at weight 5 (bench/RESULTS.md).

**Constrained types** (``constrained=True``, the default). A type whose pods require node
labels, an arch, a tier or a site (:func:`~placement.plugins.constraints.static_key`:
the constraints that read fixed node properties, e.g. a GPU model as in the trace's
``gpuspec33`` list) is a type of its own, and on a node that does not admit it none of
its pods fit: every free GPU is its fragment, FGD's "does not fit" case
(:func:`admit_matrix`). Its weight is divided by its *reach* ``ρ_m``, the share of the
cluster's GPU capacity on the nodes that admit it (:func:`reach`; 1
for an unconstrained or CPU-only type): ``F_n`` is the fragmentation the arriving
workload meets at node ``n``, and a pod of a type that may use only ``ρ_m`` of the
GPUs meets each of them ``1/ρ_m`` times as often as one that may use all. So a request
that any GPU could take leaves the GPUs only a constrained type can use to that type.
Each entry of :func:`frag_matrix` still depends only on its node and type, so the memo
stays exact, and the weights only grow (``q_m ≥ p_m``), so the one-pod bound of
:meth:`GpuFragmentation.growth_bound` stays a lower bound. On the ``gpuspec33`` list in
trace order it fails 1,326 pods where keying types by (cpu, memory, gpu) alone fails
1,348 at weight 0.5 (the default then), and 656 vs 752 at weight 5 (kube-default 788;
bench/RESULTS.md): unconstrained pods drawn to the 70 W T4s by the energy term were
what left T4-only pods without a GPU.

**Scarcity.** ``ΔF`` is multiplied by the GPU pressure (allocated share of the
snapshot's GPU capacity): stranding a GPU costs nothing in an idle cluster.

The term is *dynamic* (it reads free capacity), so it is not part of the cacheable
linear objective of :mod:`placement.batch`; the batch assigner adds it per request over
the fitting nodes (:meth:`GpuFragmentation.delta`, vectorised over nodes × task types ×
GPUs), and :func:`placement.place` scores it like any plugin. Its weight is
:attr:`GpuFragmentation.weight` (not a field of the workflow's objective).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from placement.framework import (
    BoundsDelta,
    CachedDelta,
    DescribesCandidates,
    DynamicScore,
    ObservesBatch,
    Term,
    Weighted,
    ZeroDelta,
)
from placement.plugins.constraints import StaticKey, static_key, static_mask
from placement.predict import CycleState
from placement.snapshot import CPU_EPS

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "GpuFragmentation"
TypeKey = tuple[float, int, int, StaticKey | None]
"""A task type: (cpu cores, memory bytes, gpu units, static constraints)."""
MAX_TYPES = 32
"""Task types kept in the learned workload distribution (most frequent first)."""
DEFAULT_WEIGHT = 1.0
"""Beside the objective's terms (each 1 by default). The term's normalised cost is below 1
(``1 − floor / (ΔF + floor)``), so at weight ``w`` beside completion and energy at 1 it
decides at most ``w / (w + 2)`` of a node's total (a third at 1), and other terms can
outweigh any fragmentation. 1 is the lowest weight measured that packs the Alibaba GPU
trace in trace order better than kube-default on both pod lists (bench/RESULTS.md): on
``gpuspec33`` 776 of 8,152 pods fail at 86.61 % GPU allocation (kube-default 788; 1,326 at
0.5, the default until then; 656 at 5), on the default list 113 (kube-default 156; 113 at
0.5, 73 at 5). The term cannot tell whether GPU work will follow: on scenario A (30
batches × 48, no future GPU work, learned predictor) weight 1 costs 2.1 % completion and
5.6 % energy against 0.5 (1,371 s and 10,782 kJ per batch vs 1,343 s and 10,207 kJ;
kube-default 1,495 s and 12,177 kJ), contended A 0.5 % and 1.9 %; weight 5 costs 9 % and
25 %, more energy than kube-default's. So 1 is the default and a GPU-sharing cluster sets
5 (``placement_fragmentation_weight``, docs/configuration.md)."""
STRAND_WEIGHT = 1.0
"""Weight of the stranding count ``S_n`` in ``F_n`` (module docstring): 1 counts a GPU
its host can no longer feed as one fragmented GPU (of the GPU workload's share)."""
MEMORY = 5000
"""Request keys remembered for the online distribution (older ones are forgotten)."""


@dataclass(frozen=True)
class Workload:
    """Task types and their popularity: arrays of shape ``(T,)``.

    ``cpu`` (cores), ``memory`` (bytes), ``gpu`` (units of the snapshot's ``gpu_unit``),
    ``prob`` (sums to 1); ``admit``: each type's static constraints
    (:func:`~placement.plugins.constraints.static_key`, None = any node), stored empty
    when no type has any ("Constrained types" in the module docstring). Raises
    ``ValueError`` on mismatched shapes or negative probabilities.
    """

    cpu: np.ndarray
    memory: np.ndarray
    gpu: np.ndarray
    prob: np.ndarray
    admit: tuple[StaticKey | None, ...] = ()

    def __post_init__(self) -> None:
        shapes = {a.shape for a in (self.cpu, self.memory, self.gpu, self.prob)}
        if len(shapes) != 1 or self.prob.ndim != 1:
            raise ValueError(f"Workload arrays must share one 1-d shape, got {shapes}")
        if self.admit and len(self.admit) != self.prob.size:
            raise ValueError(f"Workload admit has {len(self.admit)} keys for "
                             f"{self.prob.size} types")
        if all(k is None for k in self.admit):  # no constrained type: one spelling, ()
            object.__setattr__(self, "admit", ())
        if (self.prob < 0).any():
            raise ValueError("Workload prob must be >= 0")

    @classmethod
    def of(cls, types: list[tuple[float, int, int, float]]
           | list[tuple[float, int, int, float, StaticKey | None]]) -> Workload:
        """From ``(cpu cores, memory bytes, gpu units, weight)`` tuples (weights
        normalised), each optionally with a fifth element: its static constraints."""
        if not types:
            raise ValueError("Workload.of needs at least one (cpu, memory, gpu, weight) type")
        a = np.array([t[3] for t in types], dtype=np.float64)
        if a.sum() <= 0:
            raise ValueError("Workload weights must add up to more than 0")
        return cls(np.array([t[0] for t in types], dtype=np.float64),
                   np.array([t[1] for t in types], dtype=np.int64),
                   np.array([t[2] for t in types], dtype=np.int64), a / a.sum(),
                   tuple(t[4] if len(t) > 4 else None for t in types))

    def select(self, sel: np.ndarray) -> Workload:
        """The types where the boolean ``sel`` ``(T,)`` holds (popularity as it is)."""
        keys = tuple(k for k, s in zip(self.admit, sel.tolist(), strict=True) if s) \
            if self.admit else ()
        return Workload(self.cpu[sel], self.memory[sel], self.gpu[sel], self.prob[sel], keys)


def _admitting(key: StaticKey, snap: Snapshot) -> tuple[np.ndarray, float]:
    """The nodes that admit ``key`` (:func:`~placement.plugins.constraints.static_mask`,
    bool ``(n,)``) and their share of the snapshot's allocatable GPU units (1 when no node
    has a GPU); kept per key in the snapshot's memo (both read only the nodes)."""
    held: dict[StaticKey, tuple[np.ndarray, float]] = snap.memo("static_masks", dict)
    got = held.get(key)
    if got is None:
        mask = static_mask(key, snap)
        cap = gpu_capacity(snap)
        mine = sum(snap.nodes[i].allocatable.gpu for i in np.flatnonzero(mask).tolist())
        got = held[key] = (mask, float(mine) / cap if cap > 0 else 1.0)
    return got


def gpu_capacity(snap: Snapshot) -> float:
    """The snapshot's allocatable GPU units in all (kept in its memo)."""
    return snap.memo("gpu_capacity_units",
                     lambda: float(sum(nd.allocatable.gpu for nd in snap.nodes)))


def admit_matrix(wl: Workload, snap: Snapshot, idx: np.ndarray | None = None
                 ) -> np.ndarray | None:
    """Boolean ``(k, T)``: node ``idx[i]`` (every node when None) meets type ``m``'s static
    constraints (:attr:`Workload.admit`); None when no type has any (every node admits
    every type). ``O(k · T)``."""
    if not wl.admit:
        return None
    k = snap.n if idx is None else idx.size
    cols = [np.ones(k, dtype=bool) if key is None
            else _admitting(key, snap)[0] if idx is None else _admitting(key, snap)[0][idx]
            for key in wl.admit]
    return np.stack(cols, axis=1)


def reach(wl: Workload, snap: Snapshot) -> np.ndarray | None:
    """The share ``ρ_m`` of ``snap``'s GPU capacity each type of ``wl`` may use, ``(T,)``
    (None when no type is constrained; module docstring, "Constrained types"): 1 for an
    unconstrained type, and for a CPU-only one or one no GPU node admits, whose fragments
    (all free GPUs) are alike on every node a request can take."""
    if not wl.admit:
        return None
    share = np.array([1.0 if key is None else _admitting(key, snap)[1] for key in wl.admit])
    out: np.ndarray = np.where((wl.gpu > 0) & (share > 0), share, 1.0)
    return out


def type_weights(wl: Workload, unit: int, pods: bool = False,
                 reach: np.ndarray | None = None) -> np.ndarray:
    """The weight of each task type's fragments in ``F_n``, shape ``(T,)``: its
    popularity ``p_m`` (fragments in GPUs), or with ``pods`` ``p_m · unit / size_m``
    with ``size_m`` the units one pod of ``m`` takes (its request when fractional, its
    whole GPUs otherwise, one GPU for a CPU-only type): fragments in pods of ``m`` they
    could have held (module docstring, "Pods, not GPUs"); each divided by ``reach``
    ``(T,)`` when given (:func:`reach`, "Constrained types")."""
    prob = wl.prob if reach is None else wl.prob / reach
    if not pods:
        return prob
    size = np.where(wl.gpu <= 0, unit,
                    np.where(wl.gpu < unit, wl.gpu, -(-wl.gpu // unit) * unit))
    out: np.ndarray = prob * unit / size
    return out


def fragmentation(free_cpu: np.ndarray, free_mem: np.ndarray, slots: np.ndarray, unit: int,
                  wl: Workload, fill: bool = True, strand: float = 0.0,
                  pods: bool = False, admit: np.ndarray | None = None,
                  reach: np.ndarray | None = None) -> np.ndarray:
    """Expected fragmentation ``F_n`` per node (module docstring), shape ``(k,)``: in GPUs,
    or with ``pods`` in pods (:func:`type_weights`).

    ``free_cpu`` (cores) and ``free_mem`` (bytes): shape ``(k,)``; ``slots``: free units
    per physical GPU, ``(k, G)``; ``unit``: units per GPU. ``fill=False``: FGD's
    measure (one pod of each type); ``fill=True``: the fill-up extension; ``strand``:
    the weight of :func:`stranding` added (module docstring; 0 = without it);
    ``admit``: bool ``(k, T)``, where each type may run (:func:`admit_matrix`'s rows;
    None = everywhere).
    """
    k = slots.shape[0]
    if slots.shape[1] == 0 or k == 0:
        return np.zeros(k)
    out: np.ndarray = frag_matrix(free_cpu, free_mem, slots, unit, wl, fill, admit) \
        @ type_weights(wl, unit, pods, reach)
    if strand:
        out = out + strand * stranding(free_cpu, free_mem, slots, unit, wl, pods)
    return out


def stranding(free_cpu: np.ndarray, free_mem: np.ndarray, slots: np.ndarray, unit: int,
              wl: Workload, pods: bool = False) -> np.ndarray:
    """GPUs the nodes' cpu and memory can no longer feed at the GPU workload's ratio,
    ``S_n`` of the module docstring, shape ``(k,)`` (arguments as :func:`fragmentation`;
    zeros when the workload has no GPU type); with ``pods``, over the mean units of one
    GPU pod (``Σ p_m size_m / Σ p_m``): in pods."""
    sel = (wl.gpu > 0) & (wl.prob > 0)
    k = slots.shape[0]
    if not sel.any() or k == 0 or slots.shape[1] == 0:
        return np.zeros(k)
    p, g = wl.prob[sel], wl.gpu[sel].astype(np.float64)
    pg = float((p * g).sum())
    k_cpu = float((p * wl.cpu[sel]).sum()) / pg
    k_mem = float((p * wl.memory[sel]).sum()) / pg
    units = slots.sum(axis=1).astype(np.float64)
    feed = units
    if k_cpu > 0:
        feed = np.minimum(feed, np.maximum(free_cpu + CPU_EPS, 0) / k_cpu)
    if k_mem > 0:
        feed = np.minimum(feed, np.maximum(free_mem, 0) / k_mem)
    out: np.ndarray = float(p.sum()) * (units - feed) / unit
    if pods:  # in GPU pods: over the mean units of one (as type_weights sizes them)
        size = np.where(g < unit, g, -(-g // unit) * unit)
        out = out * unit / (float((p * size).sum()) / float(p.sum()))
    return out


def fill_count(free_cpu: np.ndarray, free_mem: np.ndarray, slots: np.ndarray, unit: int,
               wl: Workload, admit: np.ndarray | None = None) -> np.ndarray:
    """How many pods of each task type the nodes still hold, by their free GPUs, cpu and
    memory together: shape ``(k, T)`` (float; ``inf`` for a type asking for nothing; 0
    where ``admit`` is False). Arguments as :func:`fragmentation`; the fill-up measure's
    count."""
    frac = (wl.gpu > 0) & (wl.gpu < unit)
    full = (slots == unit).sum(axis=1)
    need = -(-wl.gpu // unit)
    g = np.maximum(wl.gpu, 1)
    by_frac = (slots[:, :, None] // g[None, None, :]).sum(axis=1)         # (k, T)
    by_whole = full[:, None] // np.maximum(need, 1)[None, :]
    by_gpu = np.where(frac[None, :], by_frac, by_whole)
    with np.errstate(divide="ignore", invalid="ignore"):
        by_cpu = np.where(wl.cpu[None, :] > 0, np.floor(
            (np.maximum(free_cpu, 0)[:, None] + CPU_EPS) / wl.cpu[None, :]), np.inf)
        by_mem = np.where(wl.memory[None, :] > 0, np.floor(
            np.maximum(free_mem, 0)[:, None] / wl.memory[None, :]), np.inf)
    out: np.ndarray = np.minimum(by_gpu, np.minimum(by_cpu, by_mem))
    if admit is not None:
        out = np.where(admit, out, 0.0)
    return out


def frag_matrix(free_cpu: np.ndarray, free_mem: np.ndarray, slots: np.ndarray, unit: int,
                wl: Workload, fill: bool = True, admit: np.ndarray | None = None
                ) -> np.ndarray:
    """Fragmented GPUs per node and task type, ``frag_n(m)``, shape ``(k, T)``.

    Arguments as :func:`fragmentation` (``slots`` must have at least one column); a type
    a node does not admit cannot use any of its GPUs (every free GPU is a fragment, as
    when it does not fit). Every
    entry depends only on its own node and type (elementwise), which is what lets
    :class:`FragmentationCache` memoise entries exactly. ``F_n`` is ``frag_matrix(...)
    @ type_weights(wl, unit, pods)``.
    """
    idle = slots.sum(axis=1) / unit                                       # (k,)
    frac = (wl.gpu > 0) & (wl.gpu < unit)
    whole = wl.gpu >= unit
    full = (slots == unit).sum(axis=1)
    need = -(-wl.gpu // unit)
    if fill:
        count = fill_count(free_cpu, free_mem, slots, unit, wl, admit)
        usable_units = np.where(frac[None, :], count * wl.gpu[None, :],
                                count * need[None, :] * unit)
        frag = np.where((wl.gpu > 0)[None, :], idle[:, None] - usable_units / unit,
                        idle[:, None])
        return frag  # type: ignore[no-any-return]
    res_fit = (free_cpu[:, None] + CPU_EPS >= wl.cpu[None, :]) \
        & (free_mem[:, None] >= wl.memory[None, :])                       # (k, T)
    if admit is not None:
        res_fit &= admit
    # fractional types: fits when one GPU holds it; fragments = GPUs holding less
    below = slots[:, :, None] < wl.gpu[None, None, :]                     # (k, G, T)
    frag_frac = (slots[:, :, None] * below).sum(axis=1) / unit            # (k, T)
    fit_frac = slots.max(axis=1)[:, None] >= wl.gpu[None, :]
    # whole-GPU types: fits with enough entirely free GPUs; fragments = partly used GPUs
    partial = (slots * (slots < unit)).sum(axis=1) / unit                 # (k,)
    fit_whole = full[:, None] >= need[None, :]
    frag = np.where(frac[None, :] & res_fit & fit_frac, frag_frac,
                    np.where(whole[None, :] & res_fit & fit_whole, partial[:, None],
                             idle[:, None]))
    return frag  # type: ignore[no-any-return]


def take_slots(slots: np.ndarray, g: int, unit: int) -> np.ndarray:
    """A copy of ``slots`` ``(k, G)`` after placing ``g`` units on every row, as
    :meth:`placement.snapshot.Snapshot.take_gpus` would (best-fit GPU for a fractional
    request, the first entirely free GPUs for whole ones)."""
    after_slots = slots.copy()
    if 0 < g < unit:
        holds = after_slots >= g
        j = np.argmin(np.where(holds, after_slots, np.iinfo(np.int64).max), axis=1)
        rows = np.arange(slots.shape[0])
        after_slots[rows, j] -= np.minimum(g, after_slots[rows, j])
    elif g >= unit:
        need = -(-g // unit)
        free = after_slots == unit
        take = free & (np.cumsum(free, axis=1) <= need)
        after_slots[take] = 0
    return after_slots


class GpuFragmentation:
    """Score: growth of the node's expected GPU fragmentation (pods it blocks, or GPUs with
    ``pods=False``), lower is better.

    Args:
        weight: the plugin's weight beside the objective's terms (0 switches it off).
        workload: a fixed task-type distribution; None = learned online (module
            docstring).
        fill: use the fill-up measure (True) or FGD's one-pod measure (False).
        scarcity: scale ``ΔF`` by the GPU pressure (:meth:`pressure`).
        knee: pressure below which the term is off (0 = scale linearly from empty).
        strand: weight of the CPU/memory stranding count (module docstring; 0 = the
            fill-up or FGD measure alone).
        pods: count fragments in the pods of each type they could have held (True) or
            in GPUs as FGD does (False); module docstring, "Pods, not GPUs".
        constrained: key the learned task types by their static constraints too (True)
            or by (cpu, memory, gpu) alone (False); module docstring, "Constrained
            types".

    Declares (:mod:`placement.framework`) :class:`DynamicScore` (reads free capacity:
    evaluated per request, never cached per task class), :class:`CachedDelta`
    (:class:`FragmentationCache`), :class:`ObservesBatch` (learns the workload),
    :class:`Weighted`, :class:`ZeroDelta` (:meth:`unchanged`), :class:`BoundsDelta`
    (:meth:`growth_bound`) and :class:`DescribesCandidates` (:meth:`describe_candidates`).
    """

    name = NAME
    term: Term = "fragmentation"
    lower_is_better = True
    floor = 0.05
    """In the measure's unit (pods, or GPUs): a twentieth more or less does not matter."""

    def __init__(self, weight: float = DEFAULT_WEIGHT, workload: Workload | None = None,
                 fill: bool = True, scarcity: bool = True, knee: float = 0.0,
                 strand: float = STRAND_WEIGHT, pods: bool = True,
                 constrained: bool = True) -> None:
        if weight < 0:
            raise ValueError(f"GpuFragmentation weight must be >= 0, got {weight}")
        if strand < 0:
            raise ValueError(f"GpuFragmentation strand must be >= 0, got {strand}")
        self.strand = strand
        self.pods = pods
        self.constrained = constrained
        self.weight = weight
        self.fill = fill
        self.scarcity = scarcity
        self.knee = knee
        self.workload = workload
        self._counts: Counter[TypeKey] = Counter()
        self._seen: set[str] = set()
        self._order: deque[tuple[str, TypeKey]] = deque()
        self._cached: Workload | None = None
        self._support: tuple[Workload | None, np.ndarray, np.ndarray] | None = None
        self._gpu_fills: dict[tuple[bytes, tuple[int, ...], int],
                              tuple[Workload, np.ndarray]] = {}

    def observe(self, req: PlacementRequest) -> None:
        """Count ``req``'s (cpu, memory, gpu, static constraints) type once per request
        key."""
        if self.workload is not None or req.key in self._seen:
            return
        r = req.task.resources
        t = (float(r.cpu), int(r.memory), int(r.gpu),
             static_key(req.task.constraints) if self.constrained else None)
        self._seen.add(req.key)
        self._order.append((req.key, t))
        changed = t not in self._counts  # the set of types seen, not only their counts
        self._counts[t] += 1
        if len(self._order) > MEMORY:
            old_key, old_t = self._order.popleft()
            self._seen.discard(old_key)
            self._counts[old_t] -= 1
            if self._counts[old_t] <= 0:
                del self._counts[old_t]
                changed = True
        self._cached = None
        if changed or len(self._counts) > MAX_TYPES:  # then the top types move with counts
            self._support = None

    def distribution(self) -> Workload | None:
        """The workload in use: the fixed one, or the learned one (None before any)."""
        if self.workload is not None:
            return self.workload
        if self._cached is None and self._counts:
            top = self._counts.most_common(MAX_TYPES)
            self._cached = Workload.of([(c, m, g, float(w), a) for (c, m, g, a), w in top])
        return self._cached

    def delta(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        """``ΔF`` (GPUs) of placing ``req`` on each node of ``idx``, shape ``(len(idx),)``.

        Zeros when the nodes have no GPUs or no workload is known yet. The nodes must fit
        the request (the caller's capacity filter).
        """
        wl = self.distribution()
        slots = snap.gpu_slots[idx]
        if wl is None or slots.shape[1] == 0 or idx.size == 0 or not slots.any():
            return np.zeros(idx.size)
        r = req.task.resources
        unit = snap.gpu_unit
        cpu, mem = snap.free_cpu[idx], snap.free_mem[idx]
        admit = admit_matrix(wl, snap, idx)
        rho = reach(wl, snap)
        before = fragmentation(cpu, mem, slots, unit, wl, self.fill, self.strand, self.pods,
                               admit, rho)
        after_slots = take_slots(slots, int(r.gpu), unit)
        after = fragmentation(cpu - r.cpu, mem - r.memory, after_slots, unit, wl, self.fill,
                              self.strand, self.pods, admit, rho)
        return (after - before) * self.pressure(snap)  # type: ignore[no-any-return]

    def _gpu_types(self) -> tuple[Workload | None, np.ndarray, np.ndarray]:
        """The workload's GPU types with ``p > 0`` (None when there are none) and their cpu
        and memory as safe divisors (1 where 0), ``(1, S)``. Kept until the set of types
        changes (:meth:`observe`): the popularities do not matter to :meth:`unchanged`,
        so a new request key does not rebuild the workload for it."""
        if self._support is None:
            wl = self.distribution()
            sel = (wl.gpu > 0) & (wl.prob > 0) if wl is not None else None
            if wl is None or sel is None or not sel.any():
                self._support = (None, np.ones((1, 0)), np.ones((1, 0), dtype=np.int64))
            else:
                sub = wl.select(sel)
                c, m = sub.cpu[None, :], sub.memory[None, :]
                self._support = (sub, np.where(c > 0, c, 1.0), np.where(m > 0, m, 1))
        return self._support

    def unchanged(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        """Nodes of ``idx`` where a CPU-only ``req`` leaves every task type's fragments
        as they are, so :meth:`delta` is exactly 0 there: bool ``(len(idx),)``.

        Placing no GPU changes no GPU slot; a type's fragments change only if the cpu
        and memory left change how many of its pods the node holds (fill-up measure) or
        whether one fits (FGD's). Comparing those counts before and after is exact for
        the types of the workload with ``p > 0`` (the rest weigh 0) and cheaper than
        ``ΔF`` (no memo, no product with ``p``). With :attr:`strand` on, ``S_n`` must
        also be the same (computed as :meth:`delta` does). Always False for a GPU
        request.
        """
        return self.growth_bound(req, snap, idx, 0.0)[0]

    def growth_bound(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray,
                     pressure: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`unchanged` and, where it is False, a lower bound of :meth:`delta` per node
        (``pressure``: :meth:`pressure` of ``snap``): ``(same, lower)``, bool and float
        ``(len(idx),)``; ``lower`` is 0 where ``same`` or where no bound is known (a GPU
        request, FGD's measure).

        With the fill-up measure a CPU-only request never lowers a type's pod count nor
        ``S_n`` (less cpu/memory feeds no more pods and no more GPUs), so ``ΔF`` is a sum
        of non-negative parts: where a type's count drops, ``ΔF`` is at least
        :meth:`least_positive`'s one-pod bound (the :attr:`strand` part only adds);
        where the counts are the same, the fill-up part is bit for bit the same before
        and after, and ``ΔF = pressure · strand · (S_after − S_before)``, known exactly
        here (``S_n`` as :meth:`delta` computes it). Less a margin for rounding."""
        r = req.task.resources
        k = idx.size
        none = np.zeros(k)
        if r.gpu > 0 or k == 0:
            return np.zeros(k, dtype=bool), none
        sub, c, m = self._gpu_types()
        if sub is None or snap.gpu_slots.shape[1] == 0:
            return np.ones(k, dtype=bool), none  # delta is 0: no GPU type, or no GPUs
        cpu, mem = snap.free_cpu[idx], snap.free_mem[idx]
        slots = snap.gpu_slots[idx]
        # before and after stacked (rows k..2k-1 = after): one pass of each formula,
        # elementwise, so every value is what a pass over either half alone gives
        cpu2 = np.concatenate([cpu, cpu - r.cpu])
        mem2 = np.concatenate([mem, mem - r.memory])
        admit = admit_matrix(sub, snap, idx)
        if self.fill:  # fill_count's formulas; its GPU bound is the same before and after
            by_gpu = self._by_gpu(slots, snap.gpu_unit, sub)
            if admit is not None:  # a type a node does not admit holds 0 pods there
                by_gpu = np.where(admit, by_gpu, 0.0)
            no_c, no_m = sub.cpu[None, :] <= 0, sub.memory[None, :] <= 0
            lim = np.minimum(
                np.where(no_c, np.inf, np.floor((np.maximum(cpu2, 0)[:, None] + CPU_EPS) / c)),
                np.where(no_m, np.inf, np.floor(np.maximum(mem2, 0)[:, None] / m)))
            before, after = np.minimum(by_gpu, lim[:k]), np.minimum(by_gpu, lim[k:])
        else:
            c, m = sub.cpu[None, :], sub.memory[None, :]
            before = (cpu[:, None] + CPU_EPS >= c) & (mem[:, None] >= m)
            after = ((cpu - r.cpu)[:, None] + CPU_EPS >= c) & ((mem - r.memory)[:, None] >= m)
            if admit is not None:
                before, after = before & admit, after & admit
        same: np.ndarray = (before == after).all(axis=1)
        lower = none
        if self.fill and pressure > 0 and not same.all():
            lower = np.where(same, 0.0, self._least_pod(req, snap, pressure))
        if self.strand and same.any():  # S_n as delta computes it, before and after
            wl = self.distribution()
            assert wl is not None
            both = stranding(cpu2, mem2, np.concatenate([slots, slots]), snap.gpu_unit, wl,
                             self.pods)
            s0, s1 = both[:k], both[k:]
            grown = same & (s0 != s1)
            same &= ~grown
            if pressure > 0 and grown.any():
                gain = pressure * self.strand * (s1 - s0)
                lower = np.where(grown, np.maximum(gain * (1.0 - 1e-9) - 1e-12, 0.0), lower)
        return same, lower

    def _by_gpu(self, slots: np.ndarray, unit: int, sub: Workload) -> np.ndarray:
        """:func:`fill_count` bounded by the GPUs alone (cpu and memory unlimited) for the
        rows ``slots`` ``(k, G)`` and the types ``sub``, shape ``(k, T)``: kept per
        (slots, unit, types) — a CPU-only request changes no slot, so the blocks of free
        GPU states the bound walk asks about repeat. At most 256 blocks, then all
        dropped."""
        key = (slots.tobytes(), slots.shape, unit)
        held = self._gpu_fills.get(key)
        if held is not None and held[0] is sub:
            return held[1]
        if len(self._gpu_fills) >= 256:
            self._gpu_fills.clear()
        k = slots.shape[0]
        out = fill_count(np.full(k, np.inf), np.full(k, np.inf), slots, unit, sub)
        self._gpu_fills[key] = (sub, out)
        return out

    def least_positive(self, req: PlacementRequest, snap: Snapshot, pressure: float) -> float:
        """A lower bound of :meth:`delta` where :meth:`unchanged` is False (fill-up measure,
        CPU-only request): there a type ``m`` with ``p_m > 0`` holds fewer pods, so its
        fragments grow by at least one pod's GPUs (``g_m / unit`` for a fractional type,
        its whole GPUs otherwise) and ``ΔF ≥ pressure · min_m p_m · that``, less a margin
        for rounding; with :attr:`pods` a pod of ``m`` weighs ``p_m`` whatever its size.
        0 for FGD's measure, a GPU request or with :attr:`strand` on (``S_n`` grows
        continuously with the cpu taken: no positive bound)."""
        if self.strand:
            return 0.0
        return self._least_pod(req, snap, pressure)

    def _least_pod(self, req: PlacementRequest, snap: Snapshot, pressure: float) -> float:
        """:meth:`least_positive`'s one-pod bound, whatever :attr:`strand` (it bounds
        ``ΔF`` where a type's pod count drops; :meth:`growth_bound`)."""
        wl = self.distribution()
        if not self.fill or req.task.resources.gpu > 0 or wl is None:
            return 0.0
        sel = (wl.gpu > 0) & (wl.prob > 0)
        if not sel.any():
            return 0.0
        unit = snap.gpu_unit
        g = wl.gpu[sel]
        pod = np.ones(g.size) if self.pods else \
            np.where(g < unit, g / unit, -(-g // unit)).astype(np.float64)
        least = float(pressure) * float((wl.prob[sel] * pod).min())
        return max(0.0, least * (1.0 - 1e-9) - 1e-12)

    def delta_cache(self, snap: Snapshot) -> FragmentationCache:
        """An exact memo of :meth:`delta` over ``snap`` (:class:`FragmentationCache`)."""
        return FragmentationCache(self, snap)

    def pressure(self, snap: Snapshot) -> float:
        """GPU pressure in [0, 1]: the allocated share ``u`` of the snapshot's GPU
        capacity, as ``(u − knee) / (1 − knee)`` clipped (1 when :attr:`scarcity` is
        off). Stranding a GPU costs nothing while GPUs are plentiful and matters in full
        when they run out."""
        if not self.scarcity:
            return 1.0
        cap = gpu_capacity(snap)
        if cap <= 0:
            return 0.0
        used = 1.0 - float(snap.free_gpu.sum()) / cap
        return float(min(1.0, max(0.0, (used - self.knee) / (1.0 - self.knee))))

    def score(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
              mask: np.ndarray) -> np.ndarray:
        """``ΔF − min ΔF`` over ``mask`` (so the best node scores 0), zeros elsewhere."""
        self.observe(req)
        out = np.zeros(snap.n)
        idx = np.flatnonzero(mask)
        if idx.size:
            d = self.delta(req, snap, idx)
            out[idx] = d - d.min()
        return out

    def describe(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
                 raw: np.ndarray, chosen: int, mask: np.ndarray) -> str | None:
        """None when the term did not tell the feasible nodes apart (no free GPU among
        them, GPUs not scarce, or the same growth everywhere — e.g. a CPU-only task among
        nodes it fragments alike): a term that contributed nothing is not named."""
        if snap.gpu_slots.shape[1] == 0:
            return None
        return _reason(bool(snap.gpu_slots[mask].any()), raw[mask], float(raw[chosen]),
                       self.pods)

    def describe_candidates(self, req: PlacementRequest, snap: Snapshot, idx: np.ndarray,
                            raw: np.ndarray, at: int) -> str | None:
        """:meth:`describe` read from the candidates alone: ``idx`` the candidate node
        indices ``(k,)``, ``raw`` their ``ΔF − min ΔF`` ``(k,)``, ``at`` the chosen one's
        position in ``idx`` — the same line, without ``n``-sized arrays."""
        if snap.gpu_slots.shape[1] == 0:
            return None
        return _reason(bool(snap.gpu_slots[idx].any()), raw, float(raw[at]), self.pods)


def _reason(any_gpu: bool, values: np.ndarray, mine: float, pods: bool) -> str | None:
    """The reason of :meth:`GpuFragmentation.describe`: ``values`` the shifted growth of
    the feasible nodes, ``mine`` the chosen one's; ``any_gpu``: whether any has a free
    GPU; ``pods``: the growth is in pods blocked (:attr:`GpuFragmentation.pods`), else in
    GPUs."""
    unit = "pods blocked" if pods else "GPU"
    if not any_gpu or values.size < 2 or float(values.max() - values.min()) <= 1e-9:
        return None
    if mine <= 1e-9:
        others = values[values > 1e-9]
        return (f"least growth of GPU fragmentation ({float(others.min()):.2f} {unit} more "
                "on the next best node)")
    return f"GPU fragmentation grows {mine:.2f} {unit} more than on the best node"


class FragmentationCache:
    """Exact memo of ``frag_n(m)`` per (node, task type), before and after a request.

    ``frag_n(m)`` (:func:`frag_matrix`) depends only on node ``n``'s free state (free
    cpu, free memory, free units per GPU) and on type ``m``; a placement changes the
    state of one node. So the cache keeps, per node with GPUs, the state its entries were
    computed from and a version, bumped whenever :meth:`delta` finds the snapshot's state
    of that node different (whoever changed it); an entry is reused only at the node's
    current version. Entries are kept for "before" (the node as it is) and, per request
    shape ``(cpu, memory, gpu)``, for "after" (the node with that request placed), one
    column per task type ever seen (the workload's ``p`` is applied afresh on every
    call: a new request key changes it, not the entries). ``F_n = frag @ q`` (:func:`type_weights`) is then
    computed exactly as :meth:`GpuFragmentation.delta` does, so :meth:`delta` returns the
    same values — bit for bit — at the cost of recomputing only the nodes changed since.

    Memory: ``8 · (nodes with GPUs) · types`` bytes per kept request shape; at most
    :attr:`MAX_SHAPES` shapes are kept (least recently used dropped) and at most
    :attr:`MAX_COLUMNS` types (then everything is dropped and rebuilt).
    """

    MAX_SHAPES = 32
    MAX_COLUMNS = 128

    def __init__(self, plugin: GpuFragmentation, snap: Snapshot) -> None:
        self.plugin = plugin
        self.snap = snap
        gpu_nodes = snap.gpu_slots.any(axis=1) | np.array(
            [nd.capacity.gpu > 0 for nd in snap.nodes], dtype=bool)
        self._row = np.full(snap.n, -1, dtype=np.int64)
        self._row[gpu_nodes] = np.arange(int(gpu_nodes.sum()))
        r = int(gpu_nodes.sum())
        self._ver = np.zeros(r, dtype=np.int64)
        self._st_cpu = np.full(r, np.nan)
        self._st_mem = np.full(r, -1, dtype=np.int64)
        self._st_slots = np.full((r, snap.gpu_slots.shape[1]), -1, dtype=np.int64)
        self._reset()

    def _reset(self) -> None:
        self._col: dict[TypeKey, int] = {}
        self._stores: dict[tuple[float, int, int] | None, tuple[np.ndarray, np.ndarray]] = {}
        self._wl: Workload | None = None
        self._by_types: dict[tuple[bytes, bytes, bytes, tuple[StaticKey | None, ...]],
                             np.ndarray] = {}
        self._cols = np.zeros(0, dtype=np.int64)

    def _columns(self, wl: Workload) -> np.ndarray:
        if wl is self._wl:
            return self._cols
        types = (wl.cpu.tobytes(), wl.memory.tobytes(), wl.gpu.tobytes(), wl.admit)
        known = self._by_types.get(types)
        if known is not None:  # same types in the same order, new popularity
            self._wl, self._cols = wl, known
            return known
        cols = []
        for c, m, g, a in zip(wl.cpu.tolist(), wl.memory.tolist(), wl.gpu.tolist(),
                              wl.admit or (None,) * wl.prob.size, strict=True):
            key = (float(c), int(m), int(g), a)
            j = self._col.get(key)
            if j is None:
                if len(self._col) >= self.MAX_COLUMNS:
                    self._reset()
                    return self._columns(wl)
                j = self._col[key] = len(self._col)
            cols.append(j)
        self._wl, self._cols = wl, np.array(cols, dtype=np.int64)
        self._by_types[types] = self._cols
        return self._cols

    def _store(self, key: tuple[float, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        st = self._stores.pop(key, None)
        width = len(self._col)
        if st is None:
            st = (np.full((self._ver.size, max(width, 8)), np.nan),
                  np.full(self._ver.size, -1, dtype=np.int64))
            if key is not None and len(self._stores) > self.MAX_SHAPES:
                self._stores.pop(next(k for k in self._stores if k is not None))
        elif st[0].shape[1] < width:
            grown = np.full((self._ver.size, max(width, 2 * st[0].shape[1])), np.nan)
            grown[:, :st[0].shape[1]] = st[0]
            st = (grown, st[1])
        self._stores[key] = st  # most recently used last
        return st

    def _gather(self, key: tuple[float, int, int] | None, rows: np.ndarray, ver: np.ndarray,
                cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The memo's entries of ``rows`` × ``cols`` (before, or after placing the shape
        ``key``), shape ``(k, T)``, NaN where missing; the store; the rows missing."""
        values, stamp = self._store(key)
        stale = stamp.take(rows) != ver
        sub = values.take(rows, axis=0).take(cols, axis=1)
        if stale.any():
            values[rows[stale]] = np.nan
            stamp[rows[stale]] = ver[stale]
            sub[stale] = np.nan
        return sub, values, np.isnan(sub).any(axis=1)

    def delta(self, req: PlacementRequest, idx: np.ndarray,
              pressure: float | None = None) -> np.ndarray:
        """Exactly :meth:`GpuFragmentation.delta` ``(req, snap, idx)``, shape
        ``(len(idx),)``; ``pressure``: the plugin's :meth:`~GpuFragmentation.pressure`
        of the snapshot if the caller has it."""
        p, s = self.plugin, self.snap
        wl = p.distribution()
        if wl is None or s.gpu_slots.shape[1] == 0 or idx.size == 0:
            return np.zeros(idx.size)
        rows = self._row[idx]
        slots = s.gpu_slots[idx]
        if (rows < 0).any() or not slots.any():
            return p.delta(req, s, idx)
        cpu, mem = s.free_cpu[idx], s.free_mem[idx]
        changed = (self._st_cpu[rows] != cpu) | (self._st_mem[rows] != mem) \
            | (self._st_slots[rows] != slots).any(axis=1)
        if changed.any():
            ch = rows[changed]
            self._ver[ch] += 1
            self._st_cpu[ch], self._st_mem[ch] = cpu[changed], mem[changed]
            self._st_slots[ch] = slots[changed]
        cols = self._columns(wl)
        r = req.task.resources
        key = (float(r.cpu), int(r.memory), int(r.gpu))
        ver = self._ver.take(rows)
        before, b_values, b_miss = self._gather(None, rows, ver, cols)
        after, a_values, a_miss = self._gather(key, rows, ver, cols)
        nb, na = int(b_miss.sum()), int(a_miss.sum())
        if nb or na:  # one frag_matrix call for every missing entry, before and after
            a_slots = take_slots(slots[a_miss], key[2], s.gpu_unit)
            admit = admit_matrix(wl, s, idx)
            new = frag_matrix(np.concatenate([cpu[b_miss], cpu[a_miss] - key[0]]),
                              np.concatenate([mem[b_miss], mem[a_miss] - key[1]]),
                              np.concatenate([slots[b_miss], a_slots]), s.gpu_unit, wl,
                              p.fill, None if admit is None
                              else np.concatenate([admit[b_miss], admit[a_miss]]))
            for sub, values, miss, part in ((before, b_values, b_miss, new[:nb]),
                                            (after, a_values, a_miss, new[nb:])):
                if part.shape[0]:
                    sub[miss] = part
                    values[rows[miss][:, None], cols[None, :]] = part
        q = type_weights(wl, s.gpu_unit, p.pods, reach(wl, s))
        before, after = before @ q, after @ q
        if p.strand:  # as fragmentation() adds it: O(k), not memoised
            a_all = take_slots(slots, key[2], s.gpu_unit)
            before = before + p.strand * stranding(cpu, mem, slots, s.gpu_unit, wl, p.pods)
            after = after + p.strand * stranding(cpu - key[0], mem - key[1], a_all,
                                                 s.gpu_unit, wl, p.pods)
        if pressure is None:
            pressure = p.pressure(s)
        return (after - before) * pressure  # type: ignore[no-any-return]


# Declared capabilities (placement.framework): mypy checks the signatures.
_DECLARED: tuple[type[DynamicScore], type[CachedDelta], type[ObservesBatch], type[Weighted],
                 type[ZeroDelta], type[DescribesCandidates], type[BoundsDelta]] = (
    GpuFragmentation, GpuFragmentation, GpuFragmentation, GpuFragmentation, GpuFragmentation,
    GpuFragmentation, GpuFragmentation)
