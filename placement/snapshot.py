"""The per-cycle view placement works on: nodes as numpy arrays, plus the network.

A :class:`Snapshot` is built once per placement cycle. Its constructor turns the node
list into column arrays (one entry per node, in ``nodes`` order) so every filter and
score plugin is a handful of vector operations rather than a Python loop over nodes.
RTT and bandwidth are fetched from the :class:`~placement.network.Network` once per
(location, location) pair and cached; labels and taints are grouped so that a task's
label selector or tolerations are evaluated once per distinct value, not per node.

The free-capacity arrays are *mutable*: :meth:`Snapshot.assume` deducts a placed
request (kube-scheduler's "assume"), so later placements in the same cycle see it.
Use :meth:`Snapshot.copy` for what-if previews that must leave the original alone.

Whatever placement derives from the nodes once per snapshot is kept in one declared,
keyed memo (:meth:`Snapshot.memo`), never in ad-hoc attributes; the keys in use are
listed in :data:`MEMO_KEYS`.
"""

from __future__ import annotations

import copy as _copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np

from continuum.model import Node, Resources, Taint, Tier
from placement.network import Network

TIERS: tuple[Tier, ...] = (Tier.device, Tier.edge, Tier.cloud, Tier.hpc)
"""Tier codes: ``snapshot.tier[i]`` is an index into this tuple."""
TIER_CODE = {t: i for i, t in enumerate(TIERS)}

CPU_EPS = 1e-9
"""Slack (cores) when comparing float CPU quantities, so 0.1 + 0.2 fits in 0.3."""

MEMO_KEYS: dict[str, str] = {
    "node_classes": "placement.batch.NodeClasses of the snapshot (placement.batch.node_classes)",
    "learned": "a LearnedPredictor's (model output, out-of-distribution mask) per target and "
               "task features, with the predictor and model set they came from",
    "gpu_capacity_units": "total allocatable GPU units of the nodes (fragmentation.gpu_capacity)",
    "initial_free_cpu": "free cores per node before any assume (plugins.load.NodeLoad)",
    "static_masks": "per static-constraint key, the nodes that admit it and their share of "
                    "the GPU capacity (plugins.fragmentation.admit_matrix and reach)",
}
"""The keys of :meth:`Snapshot.memo` in use, and what each holds. Every value is a function
of ``nodes`` (and ``network``) alone, never of the free arrays, which is what lets copies
share the memo."""

_T = TypeVar("_T")


@dataclass
class Snapshot:
    """Nodes, network and time of one placement cycle.

    Args:
        nodes: the candidate nodes (any readiness; the constraints filter checks it).
        network: RTT/bandwidth between location names.
        now: cycle time (Unix seconds); recorded, not used by the analytic predictors.
        gpu_unit: GPU quantity units per physical GPU: 1 when ``Resources.gpu`` counts
            whole GPUs (the control plane), 1000 when it counts milli-GPUs (GPU sharing,
            as in the Alibaba trace). A request below one unit is *fractional* and must
            fit on a single GPU; one of ``k`` units or more needs ``ceil(k / unit)``
            entirely free GPUs.

    Arrays (length ``n = len(nodes)``), built in ``__post_init__``:
        ``free_cpu`` (cores, float64), ``free_mem`` (bytes, int64), ``free_gpu`` (int64)
        — from ``node.free`` if set else ``node.allocatable``; ``cap_cpu`` (cores,
        ``capacity.cpu``); ``speed`` (per-core, reference 1.0); ``idle_watts``,
        ``max_watts``, ``gpu_watts`` (W); ``tier`` (int8 code into :data:`TIERS`);
        ``arch``, ``site`` (str arrays); ``loc`` (int index into ``locations``);
        ``ready``, ``draining`` (bool: its site takes no new work), ``container``
        (bool: "container" in ``node.runtimes``);
        ``queue_wait_s`` (s); ``taint_group`` (int index into ``taint_sets``);
        ``utilisation`` (measured CPU busy fraction, NaN when unknown) and
        ``metrics_stale`` (bool: that value is older than its site's bound);
        ``alloc_cpu`` (cores, ``allocatable.cpu``);
        ``gpu_slots`` (int64, shape ``(n, G)``, G = most physical GPUs on a node): free
        units per physical GPU, 0 where a node has fewer GPUs — built from the pooled
        free count as whole free GPUs first, then one partly used GPU with the rest.
    """

    nodes: list[Node]
    network: Network
    now: float = 0.0
    gpu_unit: int = 1
    _rtt_cache: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _bw_cache: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _label_cache: dict[tuple[str, str], np.ndarray] = field(
        default_factory=dict, init=False, repr=False
    )
    _memo: dict[str, object] = field(default_factory=dict, init=False, repr=False)
    _memo_nodes: list[Node] | None = field(default=None, init=False, repr=False)
    _module_cache: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        nodes = self.nodes
        self.n = len(nodes)
        self.ids: list[str] = [nd.id for nd in nodes]
        self.index: dict[str, int] = {nid: i for i, nid in enumerate(self.ids)}
        free = [nd.free if nd.free is not None else nd.allocatable for nd in nodes]
        self.free_cpu = np.array([f.cpu for f in free], dtype=np.float64)
        self.free_mem = np.array([f.memory for f in free], dtype=np.int64)
        self.free_gpu = np.array([f.gpu for f in free], dtype=np.int64)
        self.cap_cpu = np.array([nd.capacity.cpu for nd in nodes], dtype=np.float64)
        self.speed = np.array([nd.speed for nd in nodes], dtype=np.float64)
        self.idle_watts = np.array([nd.power.idle_watts for nd in nodes], dtype=np.float64)
        self.max_watts = np.array([nd.power.max_watts for nd in nodes], dtype=np.float64)
        self.gpu_watts = np.array([nd.power.gpu_watts for nd in nodes], dtype=np.float64)
        # Tier(t) only for a value that is not a member already (an enum call per node
        # costs more than the rest of the column)
        self.tier = np.array([TIER_CODE[t] if t in TIER_CODE else TIER_CODE[Tier(t)]
                              for t in [nd.tier for nd in nodes]], dtype=np.int8)
        self.arch = np.array([nd.arch for nd in nodes], dtype=object)
        self.site = np.array([nd.site for nd in nodes], dtype=object)
        self.ready = np.array([nd.ready for nd in nodes], dtype=bool)
        self.draining = np.array([nd.draining for nd in nodes], dtype=bool)
        self.container = np.array(["container" in nd.runtimes for nd in nodes], dtype=bool)
        self.queue_wait_s = np.array([nd.queue_wait_s for nd in nodes], dtype=np.float64)
        # live metrics (monitoring): measured CPU busy fraction (NaN = unknown), stale flag
        self.utilisation = np.array([np.nan if nd.utilisation is None else nd.utilisation
                                     for nd in nodes], dtype=np.float64)
        self.metrics_stale = np.array([nd.metrics_stale for nd in nodes], dtype=bool)
        self.alloc_cpu = np.array([nd.allocatable.cpu for nd in nodes], dtype=np.float64)
        if self.gpu_unit < 1:
            raise ValueError(f"Snapshot gpu_unit must be >= 1 (units per GPU), got {self.gpu_unit}")
        unit = self.gpu_unit
        cap_gpus = np.array([-(-nd.capacity.gpu // unit) for nd in nodes], dtype=np.int64)
        g = int(cap_gpus.max()) if self.n else 0
        slots = np.zeros((self.n, g), dtype=np.int64)
        if g:
            col = np.arange(g)[None, :]
            pooled = np.minimum(np.maximum(self.free_gpu, 0), cap_gpus * unit)[:, None]
            whole = pooled // unit
            slots[:] = np.where(col < whole, unit, 0)
            slots += np.where(col == whole, pooled % unit, 0)
            slots[col >= cap_gpus[:, None]] = 0
        self.gpu_slots = slots

        self.locations: list[str] = []
        loc_index: dict[str, int] = {}
        for nd in nodes:
            loc_index.setdefault(nd.location, len(loc_index))
        self.locations = list(loc_index)
        self.loc = np.array([loc_index[nd.location] for nd in nodes], dtype=np.int64)

        taint_keys: dict[tuple[tuple[str, str, str], ...], int] = {}
        self.taint_sets: list[tuple[Taint, ...]] = []
        groups = []
        for nd in nodes:
            ts: tuple[Taint, ...] = ()
            key: tuple[tuple[str, str, str], ...] = ()
            if nd.taints:  # most nodes have none: no sort, no key to build
                ts = tuple(sorted(nd.taints, key=lambda t: (t.key, t.value, t.effect)))
                key = tuple((t.key, t.value, t.effect) for t in ts)
            if key not in taint_keys:
                taint_keys[key] = len(self.taint_sets)
                self.taint_sets.append(ts)
            groups.append(taint_keys[key])
        self.taint_group = np.array(groups, dtype=np.int64)

        # Names a data source or SLO target may use: location, node id, node name, site.
        self._where: dict[str, str] = {}
        for nd in nodes:
            self._where.setdefault(nd.site, nd.location)
            self._where.setdefault(nd.name, nd.location)
        for nd in nodes:
            self._where[nd.id] = nd.location
        for loc in self.locations:
            self._where[loc] = loc
        self._memo_nodes = nodes  # bound now, so copies made before a first memo() share it

    # ------------------------------------------------------------------ lookups

    def resolve_location(self, name: str) -> str:
        """The location of ``name``: a location, node id, node name or site; else ``name``."""
        return self._where.get(name, name)

    def rtt_from(self, location: str) -> np.ndarray:
        """RTT (ms) from ``location`` to every node's location, shape ``(n,)``; cached."""
        vec = self._rtt_cache.get(location)
        if vec is None:
            per_loc = np.array(
                [self.network.rtt_ms(location, b) for b in self.locations], dtype=np.float64
            )
            vec = per_loc[self.loc] if self.n else np.zeros(0)
            self._rtt_cache[location] = vec
        return vec

    def bandwidth_from(self, location: str) -> np.ndarray:
        """Bandwidth (bit/s) from ``location`` to every node's location, shape ``(n,)``; cached."""
        vec = self._bw_cache.get(location)
        if vec is None:
            per_loc = np.array(
                [self.network.bandwidth_bps(location, b) for b in self.locations],
                dtype=np.float64,
            )
            vec = per_loc[self.loc] if self.n else np.zeros(0)
            self._bw_cache[location] = vec
        return vec

    def label_mask(self, key: str, value: str) -> np.ndarray:
        """Boolean ``(n,)``: node has label ``key`` = ``value``; cached per pair."""
        mask = self._label_cache.get((key, value))
        if mask is None:
            mask = np.fromiter(
                (nd.labels.get(key) == value for nd in self.nodes), dtype=bool, count=self.n
            )
            self._label_cache[(key, value)] = mask
        return mask

    def memo(self, key: str, factory: Callable[[], _T]) -> _T:
        """The value kept under ``key`` for this snapshot, built by ``factory()`` on first
        use (``key`` one of :data:`MEMO_KEYS`). Values must depend only on ``nodes`` and
        ``network``: :meth:`copy` shares the memo, and a new ``nodes`` list empties it.

        Raises:
            KeyError: ``key`` is not declared in :data:`MEMO_KEYS`.
        """
        if key not in MEMO_KEYS:
            raise KeyError(f"snapshot memo key {key!r} is not declared in MEMO_KEYS "
                           f"(declared: {', '.join(sorted(MEMO_KEYS))})")
        if self._memo_nodes is not self.nodes:
            self._memo = {}
            self._memo_nodes = self.nodes
        try:
            return cast(_T, self._memo[key])
        except KeyError:
            value = self._memo[key] = factory()
            return value
    def python_mask(self, module: str) -> np.ndarray:
        """Boolean ``(n,)``: the node offers Python module ``module`` (its top level, e.g.
        ``sklearn`` for ``sklearn.svm``) — in its declared ``python_modules``, or it declares
        none (None: assumed to provide any); cached per module."""
        top = module.split(".", 1)[0]
        mask = self._module_cache.get(top)
        if mask is None:
            mask = np.fromiter(
                (nd.python_modules is None or top in nd.python_modules for nd in self.nodes),
                dtype=bool, count=self.n)
            self._module_cache[top] = mask
        return mask

    # ------------------------------------------------------------------ assume

    def fits(self, r: Resources, idx: np.ndarray | None = None) -> np.ndarray:
        """Boolean, True where ``r`` (cores, bytes, GPU units) fits the free capacity of the
        nodes ``idx`` (default all): cpu within :data:`CPU_EPS`, memory, and GPUs as
        :meth:`gpu_fit` counts them (per physical GPU when ``gpu_unit`` > 1)."""
        rows = slice(None) if idx is None else idx
        fits: np.ndarray = ((self.free_cpu[rows] + CPU_EPS >= r.cpu)
                            & (self.free_mem[rows] >= r.memory) & self.gpu_fit(r.gpu, idx))
        return fits

    def gpu_fit(self, gpu: int, idx: np.ndarray | None = None) -> np.ndarray:
        """Boolean, True where a request of ``gpu`` units fits the GPUs of the nodes
        ``idx`` (default all): pooled count when ``gpu_unit`` is 1, else one GPU with
        ``gpu`` free units (fractional) or ``ceil(gpu / unit)`` entirely free GPUs."""
        rows = slice(None) if idx is None else idx
        if gpu <= 0:
            return np.ones(self.n if idx is None else len(idx), dtype=bool)
        if self.gpu_unit == 1 or self.gpu_slots.shape[1] == 0:
            return self.free_gpu[rows] >= gpu
        slots = self.gpu_slots[rows]
        fit: np.ndarray
        if gpu < self.gpu_unit:
            fit = slots.max(axis=1) >= gpu
        else:
            need = -(-gpu // self.gpu_unit)
            fit = (slots == self.gpu_unit).sum(axis=1) >= need
        return fit

    def take_gpus(self, i: int, gpu: int) -> None:
        """Deduct ``gpu`` units from node ``i``'s physical GPUs: a fractional request
        from the GPU with the least free units that holds it (best fit: a partly used
        GPU before an empty one), a whole-GPU request from entirely free GPUs."""
        if gpu <= 0 or self.gpu_slots.shape[1] == 0:
            return
        row = self.gpu_slots[i]
        unit = self.gpu_unit
        if gpu < unit:
            holds = row >= gpu
            j = int(np.argmin(np.where(holds, row, np.iinfo(np.int64).max)))
            if not holds[j]:
                j = int(np.argmax(row))
            row[j] -= min(gpu, int(row[j]))
            return
        left = gpu
        for j in np.argsort(-row, kind="stable"):
            if left <= 0:
                break
            take = min(int(row[j]), left)
            row[j] -= take
            left -= take

    def give_gpus(self, i: int, gpu: int) -> None:
        """Return ``gpu`` units to node ``i``'s GPUs (a run ended): fills the most used
        GPUs first. Which GPU a fractional run held is not recorded here, so this
        restores the pooled count exactly and the per-GPU layout approximately."""
        if gpu <= 0 or self.gpu_slots.shape[1] == 0:
            return
        row = self.gpu_slots[i]
        cap = -(-int(self.nodes[i].capacity.gpu) // self.gpu_unit)
        left = gpu
        for j in np.argsort(row[:cap], kind="stable"):
            if left <= 0:
                break
            give = min(self.gpu_unit - int(row[j]), left)
            row[j] += give
            left -= give

    def assume(self, i: int, resources: Resources) -> None:
        """Deduct ``resources`` from node ``i``'s free arrays (assume-and-deduct)."""
        self.free_cpu[i] -= resources.cpu
        self.free_mem[i] -= resources.memory
        self.free_gpu[i] -= resources.gpu
        self.take_gpus(i, resources.gpu)

    def copy(self) -> Snapshot:
        """A snapshot sharing nodes, network, caches and memo but with its own free arrays."""
        other = _copy.copy(self)
        other.free_cpu = self.free_cpu.copy()
        other.free_mem = self.free_mem.copy()
        other.free_gpu = self.free_gpu.copy()
        other.gpu_slots = self.gpu_slots.copy()
        return other


class SnapshotCache:
    """Hands out per-batch snapshots of an inventory that changes less often than it is
    placed on: while the caller's ``key`` is unchanged, a :meth:`Snapshot.copy` of the
    one built for that key (own free arrays, as built; shared columns, RTT/bandwidth/
    label caches and memo: node classes, the predictors' per-class outputs), else a
    snapshot built afresh, kept for the next call.

    The caller vouches for the key: equal keys must mean the same node list (same
    :class:`Node` objects, none edited in place) and a network answering as before — the
    applier uses ``(federation.inventory_generation, network.version)``, each read
    *before* the nodes are listed, so a change racing the build only costs a rebuild.
    ``None`` as key never reuses. A copy's placement is identical to one on a fresh
    snapshot of the same nodes: every column and memo value is a function of the nodes
    and the network alone, and the copy's free arrays start as the nodes' ``free``.
    Calls are serialised by a lock (copies share their lazily filled caches, whose
    values are the same whoever fills them).

    ``builds`` / ``reuses`` count the two outcomes.
    """

    def __init__(self) -> None:
        self._key: object = None
        self._base: Snapshot | None = None
        self._lock = threading.Lock()
        self.builds = 0
        self.reuses = 0

    def get(self, key: object, nodes: Callable[[], list[Node]], network: Network, now: float,
            gpu_unit: int = 1) -> Snapshot:
        """A snapshot of ``nodes()`` (called only when it must be built) for ``key``, its
        free arrays the nodes' own; ``now`` set. Raises what :class:`Snapshot` raises."""
        with self._lock:
            return self._get(key, nodes, network, now, gpu_unit)

    def _get(self, key: object, nodes: Callable[[], list[Node]], network: Network,
             now: float, gpu_unit: int) -> Snapshot:
        base = self._base
        if (key is None or base is None or key != self._key or base.network is not network
                or base.gpu_unit != gpu_unit):
            base = Snapshot(nodes=nodes(), network=network, now=now, gpu_unit=gpu_unit)
            self._key, self._base = (key, base) if key is not None else (None, None)
            self.builds += 1
        else:
            self.reuses += 1
        snap = base.copy()
        snap.now = now
        return snap

    def clear(self) -> None:
        """Forget the kept snapshot (the next :meth:`get` builds)."""
        with self._lock:
            self._key, self._base = None, None
