"""Predictors: runtime (s), energy (J) and input transfer (s, bytes) per candidate node.

This module is the seam where learned predictors plug in. A :class:`Predictor` turns one
request into arrays over the snapshot's nodes; the plugins read them through
:func:`predictions`, which memoises the arrays in the request's cycle state so runtime
is computed once even though the completion and energy plugins both use it. The
analytic predictor here (``analytic-v1``) is the fallback used while no trained model
exists; a scikit-learn predictor only has to implement the same three methods and carry
its own ``version`` string (recorded in every ``PlacementDecision.model_version``).

Formulas (all vectorised over nodes):

* runtime_s = work / (speed × cores), cores = clip(cpu request, MIN_CORES, capacity cpu);
  ``work`` is the task's core-seconds on a reference core, :data:`DEFAULT_WORK_CORE_S`
  when the task does not say.
* energy_j = runtime_s × (max_watts × cores / capacity_cpu + gpu request × gpu_watts):
  the linear idle→max power model of Fan, Weber & Barroso, "Power provisioning for a
  warehouse-sized computer", ISCA 2007, P(u) = P_idle + (P_max − P_idle)·u, with the
  task's share u = cores / capacity_cpu. The task is attributed its dynamic share
  (P_max − P_idle)·u *and* its proportional share of idle power P_idle·u, which sums to
  P_max·u; GPUs add their board power per requested GPU while the task runs.
* transfer_s = Σ over sources of min over replica locations (bytes·8 / bandwidth +
  RTT/1000), zero for a source cached on the node itself; sources are fetched one after
  another (a conservative upper bound on parallel fetches).
* wan_bytes = Σ over sources of the bytes that cross a location boundary: zero on a
  node at one of the source's replica locations (a LAN copy, or a read in place) or
  caching it, the source's bytes elsewhere. Not a prediction of the model (it follows
  from the topology), so every predictor shares it (:func:`wan_bytes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np

from continuum.model import Task

if TYPE_CHECKING:
    from placement.assign import DataSource, PlacementRequest
    from placement.snapshot import Snapshot

DEFAULT_WORK_CORE_S = 60.0
"""Work assumed when ``task.work`` is None: one minute on one reference core."""
MIN_CORES = 0.01
"""Floor on the cores a task is assumed to use, so a 0-cpu request has finite runtime."""


# ---------------------------------------------------------------- plain vector formulas


def runtime_s(
    work: float | np.ndarray, cpu_request: float | np.ndarray, speed: np.ndarray,
    cap_cpu: np.ndarray,
) -> np.ndarray:
    """Runtime (s) per node: ``work / (speed × clip(cpu_request, MIN_CORES, cap_cpu))``.

    Arguments broadcast (numpy): scalars for one task over nodes, or arrays of equal
    shape for one (task, node) pair per element (:mod:`placement.learned`)."""
    cores = np.clip(cpu_request, MIN_CORES, np.maximum(cap_cpu, MIN_CORES))
    out: np.ndarray = work / (speed * cores)
    return out


def energy_j(
    runtime: np.ndarray,
    cpu_request: float | np.ndarray,
    cap_cpu: np.ndarray,
    idle_watts: np.ndarray,
    max_watts: np.ndarray,
    gpu_request: int | np.ndarray,
    gpu_watts: np.ndarray,
) -> np.ndarray:
    """Energy (J) per node attributed to the task (Fan, Weber & Barroso, ISCA 2007).

    ``runtime × [ idle·u + (max − idle)·u + gpu_request·gpu_watts ]``,
    ``u = clip(cpu_request, MIN_CORES, cap_cpu) / cap_cpu``. Arguments broadcast as in
    :func:`runtime_s`.
    """
    cap = np.maximum(cap_cpu, MIN_CORES)
    share = np.clip(cpu_request, MIN_CORES, cap) / cap
    watts = idle_watts * share + (max_watts - idle_watts) * share + gpu_request * gpu_watts
    out: np.ndarray = runtime * watts
    return out


def transfer_time_s(nbytes: float, bandwidth_bps: np.ndarray, rtt_ms: np.ndarray) -> np.ndarray:
    """Seconds to fetch ``nbytes``: ``nbytes·8 / bandwidth + rtt_ms / 1000``."""
    return nbytes * 8.0 / bandwidth_bps + rtt_ms / 1000.0


def source_transfer(source: DataSource, snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """Transfer seconds and bytes moved per node for one input source.

    The nearest replica (least transfer time) among ``source.locations`` and the
    locations of ``source.nodes`` is used; a node listed in ``source.nodes`` pays zero
    and moves zero bytes. A source with no replica anywhere costs nothing (unknown).
    """
    replicas = {snap.resolve_location(x) for x in source.locations}
    replicas |= {snap.resolve_location(x) for x in source.nodes}
    seconds = np.zeros(snap.n)
    moved = np.zeros(snap.n, dtype=np.int64)
    if replicas:
        per = [transfer_time_s(source.bytes, snap.bandwidth_from(r), snap.rtt_from(r))
               for r in sorted(replicas)]
        seconds = np.min(np.vstack(per), axis=0) if per else seconds
        moved[:] = source.bytes
    cached = [snap.index[x] for x in source.nodes if x in snap.index]
    if cached:
        seconds[cached] = 0.0
        moved[cached] = 0
    return seconds, moved


def wan_bytes(sources: Sequence[DataSource], snap: Snapshot) -> np.ndarray:
    """Input bytes that cross the WAN per node (module docstring), int64 ``(snap.n,)``:
    a source adds its bytes on every node outside its replica locations (``locations``
    and the locations of ``nodes``) and not caching it. A source with no replica
    anywhere adds nothing (unknown), as in :func:`source_transfer`."""
    out = np.zeros(snap.n, dtype=np.int64)
    for src in sources:
        replicas = {snap.resolve_location(x) for x in src.locations}
        replicas |= {snap.resolve_location(x) for x in src.nodes}
        if not replicas:
            continue
        at = np.array([loc in replicas for loc in snap.locations], dtype=bool)
        local = at[snap.loc] if snap.n else np.zeros(0, dtype=bool)
        cached = [snap.index[x] for x in src.nodes if x in snap.index]
        local[cached] = True
        out += np.where(local, 0, src.bytes).astype(np.int64)
    return out


# ---------------------------------------------------------------- predictor seam


class Predictor(Protocol):
    """Predicts per-node runtime, energy and transfer for one task.

    Implementations must be pure functions of their inputs (no I/O) and return arrays of
    shape ``(snap.n,)``. ``version`` names the model (e.g. ``analytic-v1``,
    ``sklearn-gbr-2026-11-20``) and is recorded in each decision.
    """

    @property
    def version(self) -> str: ...

    def runtime_s(self, task: Task, snap: Snapshot) -> np.ndarray: ...

    def energy_j(self, task: Task, snap: Snapshot, runtime: np.ndarray) -> np.ndarray: ...

    def transfer(
        self, sources: Sequence[DataSource], snap: Snapshot
    ) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, bytes moved) per node for all of a request's input sources."""
        ...


@runtime_checkable
class PredictsQueueWait(Protocol):
    """Optional: a predictor that learns queue waits; overrides ``Node.queue_wait_s``."""

    def queue_wait_s(self, task: Task, snap: Snapshot) -> np.ndarray:
        """Expected wait (s) before ``task`` starts on each node, shape ``(snap.n,)``."""
        ...


@runtime_checkable
class Prefetches(Protocol):
    """Optional: a predictor that evaluates many tasks at once (one model call)."""

    def prefetch(self, tasks: Sequence[Task], snap: Snapshot) -> None:
        """Predict ``tasks`` over ``snap``'s nodes now and memoise the results, so the
        per-task calls that follow are lookups."""
        ...


@runtime_checkable
class ExplainsFallback(Protocol):
    """Optional: a predictor that may fall back to the analytic one for some nodes."""

    def fallback(self, task: Task, snap: Snapshot, i: int) -> str | None:
        """Why the analytic prediction stands in for ``task`` on node index ``i`` (e.g.
        out of the model's training range), or None when the model's prediction is used."""
        ...


def provides(obj: object, capability: type) -> bool:
    """``isinstance(obj, capability)`` for a method-only ``runtime_checkable`` protocol,
    answered once per (type, protocol) — cheap enough for per-request paths (a protocol
    ``isinstance`` costs ~10 µs). The caller then ``cast``s ``obj`` to the protocol."""
    key = (type(obj), capability)
    known = _PROVIDES.get(key)
    if known is None:
        known = _PROVIDES[key] = issubclass(key[0], capability)
    return known


_PROVIDES: dict[tuple[type, type], bool] = {}


class AnalyticPredictor:
    """The formula-based fallback predictor (see the module docstring)."""

    version = "analytic-v1"

    def __init__(self, default_work_core_s: float = DEFAULT_WORK_CORE_S) -> None:
        self.default_work_core_s = default_work_core_s

    def runtime_s(self, task: Task, snap: Snapshot) -> np.ndarray:
        work = task.work if task.work is not None else self.default_work_core_s
        return runtime_s(work, task.resources.cpu, snap.speed, snap.cap_cpu)

    def energy_j(self, task: Task, snap: Snapshot, runtime: np.ndarray) -> np.ndarray:
        r = task.resources
        return energy_j(runtime, r.cpu, snap.cap_cpu, snap.idle_watts, snap.max_watts,
                        r.gpu, snap.gpu_watts)

    def transfer(
        self, sources: Sequence[DataSource], snap: Snapshot
    ) -> tuple[np.ndarray, np.ndarray]:
        seconds = np.zeros(snap.n)
        moved = np.zeros(snap.n, dtype=np.int64)
        for src in sources:
            s, b = source_transfer(src, snap)
            seconds += s
            moved += b
        return seconds, moved


# ---------------------------------------------------------------- per-request state


@dataclass
class CycleState:
    """Scratch space for one request in one cycle (kube-scheduler's CycleState)."""

    predictor: Predictor
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodePredictions:
    """Predictions for one request, arrays of shape ``(n,)`` over the snapshot's nodes.

    ``rtt_ms`` is the RTT from each node to the task's SLO target, None without an SLO.
    """

    runtime_s: np.ndarray
    queue_wait_s: np.ndarray
    transfer_s: np.ndarray
    bytes_moved: np.ndarray
    wan_bytes: np.ndarray
    completion_s: np.ndarray
    energy_j: np.ndarray
    rtt_ms: np.ndarray | None
    slo_target_location: str | None


def predictions(req: PlacementRequest, snap: Snapshot, state: CycleState) -> NodePredictions:
    """All predictions for ``req`` over ``snap``'s nodes, memoised in ``state``."""
    cached = state.data.get("predictions")
    if cached is not None:
        return cast(NodePredictions, cached)
    p = state.predictor
    task = req.task
    runtime = p.runtime_s(task, snap)
    transfer, moved = p.transfer(req.sources, snap)
    energy = p.energy_j(task, snap, runtime)
    rtt = target = None
    if task.slo is not None:
        target = snap.resolve_location(task.slo.target)
        rtt = snap.rtt_from(target)
    # optional: a predictor that learns queue waits (placement.learned) overrides the node's
    queue = (cast(PredictsQueueWait, p).queue_wait_s(task, snap)
             if provides(p, PredictsQueueWait) else snap.queue_wait_s)
    out = NodePredictions(
        runtime_s=runtime,
        queue_wait_s=queue,
        transfer_s=transfer,
        bytes_moved=moved,
        wan_bytes=wan_bytes(req.sources, snap),
        completion_s=queue + transfer + runtime,
        energy_j=energy,
        rtt_ms=rtt,
        slo_target_location=target,
    )
    state.data["predictions"] = out
    return out
