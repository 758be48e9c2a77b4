"""Learned predictors (scikit-learn): runtime (s), energy (J) and Slurm queue wait (s).

Three gradient-boosted tree ensembles (scikit-learn ``GradientBoostingRegressor``,
Friedman, "Greedy function approximation: a gradient boosting machine", Ann. Stat. 2001;
200 trees of depth 3) learn *corrections to the analytic model* rather than raw values,
so they need few samples and degrade gracefully. (``HistGradientBoostingRegressor`` was
measured too: its OpenMP ``predict`` costs milliseconds per call on a few rows, which a
placement cycle cannot afford; the exact-split trees answer in ≈0.3 ms.)

* runtime: target ``log(observed runtime / analytic runtime)``; predicted runtime =
  analytic × exp(model);
* energy: target ``log(observed energy / analytic energy at the observed runtime)``
  (a power-draw correction); predicted energy = analytic energy at the predicted
  runtime × exp(model);
* queue wait: target ``log1p(observed wait)``; only for Slurm nodes (partitions).

Features (one row per (task, node)): log work (core-s), cpu request (cores), memory
request (GiB), gpu request, node per-core speed, node cpu capacity, tier code, idle /
max / gpu watts, the node's own queue-wait estimate (s), log analytic runtime.

**Out of distribution**: every numeric feature must lie within its training range
widened by :data:`OOD_MARGIN` of that range, and the tier must have been seen; a node
that fails this is answered by the analytic model, and :meth:`LearnedPredictor.fallback`
says why (the decision records it). An untrained predictor answers analytically.

Accuracy is measured on a held-out 20 % of the samples (one seeded split shared by all
targets, so no target is evaluated on rows another target's model was fitted on) and
reported beside the analytic model's error on the same rows, in the target's
:data:`ERROR_METRIC`: the mean absolute percentage error (MAPE, %) for runtime and
energy; the mean absolute error in seconds (MAE, s) for queue wait, whose observations
are mostly 0 (an idle Slurm cluster starts every job at once), where a percentage is
undefined.

Why one module of this size: features, training, hold-out error, persistence with fallback
and the batch-time predictor are one model lifecycle over one feature layout; split, the
layout would have to be kept in step across files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from continuum.model import Task
from placement.predict import AnalyticPredictor, energy_j, runtime_s
from placement.snapshot import TIER_CODE, TIERS

if TYPE_CHECKING:
    from placement.assign import DataSource
    from placement.snapshot import Snapshot

log = logging.getLogger(__name__)

TARGETS = ("runtime", "energy", "queue_wait")
ERROR_METRIC = {"runtime": "mape_percent", "energy": "mape_percent", "queue_wait": "mae_seconds"}
"""Target → the held-out error it is reported in: ``mape_percent`` (:func:`mape`, %) or
``mae_seconds`` (:func:`mae`, s). Names match the ``continuum_model_*`` metrics."""
HOLDOUT = 0.2
"""Fraction of the samples held out for evaluation (:func:`holdout`)."""
FEATURES = ("log_work", "cpu", "mem_gib", "gpu", "speed", "cap_cpu", "tier", "idle_watts",
            "max_watts", "gpu_watts", "node_queue_wait_s", "log_analytic_runtime")
OOD_MARGIN = 0.1
"""Fraction of a feature's training range tolerated beyond its min and max."""
MIN_SAMPLES = 20
"""Fewest samples a target needs before a model is trained for it."""
GIB = 2**30


@dataclass
class Sample:
    """One finished run: what was asked, where it ran, what was observed.

    Units: work core-s on a reference core; cpu cores; memory bytes; watts W; seconds.
    ``queue_wait_s`` is None when unknown (non-Slurm runs); ``energy_j`` None when the
    backend does not report it.
    """

    work: float
    cpu: float
    memory: int
    gpu: int
    speed: float
    cap_cpu: float
    tier: str
    idle_watts: float
    max_watts: float
    gpu_watts: float
    node_queue_wait_s: float
    runtime_s: float
    energy_j: float | None = None
    queue_wait_s: float | None = None
    slurm: bool = False


def _matrix(work: np.ndarray, cpu: np.ndarray, mem: np.ndarray, gpu: np.ndarray,
            speed: np.ndarray, cap: np.ndarray, tier: np.ndarray, idle: np.ndarray,
            mx: np.ndarray, gw: np.ndarray, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (k, F), analytic runtime (k,)) from broadcastable arrays."""
    analytic = runtime_s(work, cpu, speed, cap)
    cols = [np.log(np.maximum(work, 1e-3)), cpu, mem / GIB, gpu, speed, cap, tier, idle, mx,
            gw, qw, np.log(np.maximum(analytic, 1e-6))]
    k = max(np.size(c) for c in cols)
    return np.column_stack([np.broadcast_to(np.asarray(c, dtype=np.float64), (k,))
                            for c in cols]), np.broadcast_to(analytic, (k,))


def sample_matrix(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Features and analytic runtimes of ``samples``."""
    def a(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in samples], dtype=np.float64)
    tier = np.array([TIER_CODE[s.tier] for s in samples], dtype=np.float64)  # type: ignore[index]
    return _matrix(a("work"), a("cpu"), a("memory"), a("gpu"), a("speed"), a("cap_cpu"), tier,
                   a("idle_watts"), a("max_watts"), a("gpu_watts"), a("node_queue_wait_s"))


def mape(pred: np.ndarray, obs: np.ndarray) -> float:
    """Mean absolute percentage error (%) over observations > 0; NaN when there is none."""
    ok = obs > 0
    if not ok.any():
        return float("nan")
    return float(100.0 * np.mean(np.abs(pred[ok] - obs[ok]) / obs[ok]))


def mae(pred: np.ndarray, obs: np.ndarray) -> float:
    """Mean absolute error (in the unit of ``obs``); NaN when ``obs`` is empty."""
    if obs.size == 0:
        return float("nan")
    return float(np.mean(np.abs(pred - obs)))


def _error(metric: str, pred: np.ndarray, obs: np.ndarray) -> float:
    return mape(pred, obs) if metric == "mape_percent" else mae(pred, obs)


def finite_or_none(value: float) -> float | None:
    """``value``, or None when it is NaN or ±inf (strict JSON has no NaN: ``null``)."""
    return value if math.isfinite(value) else None


def holdout(n: int, seed: int = 0) -> np.ndarray:
    """The rows of ``n`` samples that :func:`train` holds out for evaluation, bool ``(n,)``.

    ``round(HOLDOUT × n)`` rows (at least one when ``n`` ≥ 2) chosen by a seeded
    permutation; every target is evaluated on its usable rows among them and fitted on
    its usable rows among the others.
    """
    test = np.zeros(n, dtype=bool)
    k = min(max(1, round(HOLDOUT * n)), n - 1) if n >= 2 else 0
    test[np.random.default_rng(seed).permutation(n)[:k]] = True
    return test


@dataclass
class TargetModel:
    """One trained target: the regressor, its feature ranges and its held-out accuracy.

    ``error`` / ``analytic_error``: the learned and the analytic model's error on the
    held-out rows, in ``metric`` (:data:`ERROR_METRIC`: % for ``mape_percent``, s for
    ``mae_seconds``); NaN when no held-out row could be scored.
    """

    target: str
    model: Any
    lo: np.ndarray
    hi: np.ndarray
    tiers: list[int]
    samples: int
    error: float
    analytic_error: float
    metric: str = "mape_percent"

    def __setstate__(self, state: dict[str, Any]) -> None:
        # sets pickled before ERROR_METRIC existed carry ``mape``/``analytic_mape`` (%)
        if "error" not in state and "mape" in state:
            state = {**state, "error": state.pop("mape"),
                     "analytic_error": state.pop("analytic_mape"), "metric": "mape_percent"}
        self.__dict__.update(state)

    def ood(self, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Rows of ``x`` out of distribution, and per row the first offending feature."""
        span = np.maximum(self.hi - self.lo, 1e-9)
        lo, hi = self.lo - OOD_MARGIN * span, self.hi + OOD_MARGIN * span
        bad = (x < lo) | (x > hi)
        t = FEATURES.index("tier")
        bad[:, t] = ~np.isin(x[:, t], self.tiers)
        rows = bad.any(axis=1)
        why = []
        for r in np.flatnonzero(rows)[:1]:
            f = int(np.argmax(bad[r]))
            why.append(f"{FEATURES[f]}={x[r, f]:.4g} outside trained "
                       f"[{self.lo[f]:.4g}, {self.hi[f]:.4g}]" if f != t else
                       f"tier {TIERS[int(x[r, f])]} never seen in training")
        return rows, why


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.1,
                                     random_state=seed).fit(x, y)


def train(samples: Sequence[Sample], seed: int = 0) -> dict[str, TargetModel]:
    """Train every target with at least :data:`MIN_SAMPLES` usable samples.

    Each target is fitted on its usable rows outside :func:`holdout` and scored on those
    inside it (in :data:`ERROR_METRIC`), then refitted on all its usable rows. The
    energy target is scored at the runtime the *training-split* runtime model predicts,
    so no held-out row reaches the evaluation through the runtime model. Returns
    target → model; targets without enough data are absent (the analytic model
    answers them).
    """
    out: dict[str, TargetModel] = {}
    if not samples:
        return out
    x_all, analytic_all = sample_matrix(samples)
    test = holdout(len(samples), seed)
    obs_rt = np.array([s.runtime_s for s in samples])
    cpu, cap = x_all[:, 1], x_all[:, 5]
    idle, mx, gw, gpu = x_all[:, 7], x_all[:, 8], x_all[:, 9], x_all[:, 3]
    split_models: dict[str, Any] = {}

    def analytic_energy(rt: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return energy_j(rt, cpu[rows], cap[rows], idle[rows], mx[rows], gpu[rows], gw[rows])

    def fit_target(name: str, ok: np.ndarray, y: np.ndarray,
                   back: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   analytic_pred: np.ndarray, obs: np.ndarray) -> None:
        """``ok``: usable rows; ``y``/``analytic_pred``/``obs`` over all rows."""
        rows = np.flatnonzero(ok)
        if rows.size < MIN_SAMPLES:
            return
        tr, te = np.flatnonzero(ok & ~test), np.flatnonzero(ok & test)
        err = a_err = float("nan")
        if tr.size:
            split_models[name] = _fit(x_all[tr], y[tr], seed)
            if te.size:
                metric = ERROR_METRIC[name]
                err = _error(metric, back(split_models[name].predict(x_all[te]), te), obs[te])
                a_err = _error(metric, analytic_pred[te], obs[te])
        full = _fit(x_all[rows], y[rows], seed)
        xr = x_all[rows]
        out[name] = TargetModel(name, full, xr.min(axis=0), xr.max(axis=0),
                                sorted({int(v) for v in xr[:, FEATURES.index("tier")]}),
                                int(rows.size), err, a_err, ERROR_METRIC[name])

    with np.errstate(divide="ignore", invalid="ignore"):
        y_rt = np.log(obs_rt / analytic_all)
    fit_target("runtime", obs_rt > 0, y_rt, lambda p, te: analytic_all[te] * np.exp(p),
               analytic_all, obs_rt)

    e_obs = np.array([s.energy_j if s.energy_j is not None else -1.0 for s in samples])
    base_obs = analytic_energy(obs_rt, np.arange(len(samples)))
    base_an = analytic_energy(analytic_all, np.arange(len(samples)))
    with np.errstate(divide="ignore", invalid="ignore"):
        y_e = np.log(e_obs / np.maximum(base_obs, 1e-9))

    def energy_back(p: np.ndarray, te: np.ndarray) -> np.ndarray:
        rt_model = split_models.get("runtime")  # fitted on training rows only
        rt = analytic_all[te] * (np.exp(rt_model.predict(x_all[te])) if rt_model else 1.0)
        out: np.ndarray = analytic_energy(rt, te) * np.exp(p)
        return out

    fit_target("energy", (e_obs > 0) & (obs_rt > 0), y_e, energy_back, base_an, e_obs)

    q_obs = np.array([s.queue_wait_s if (s.queue_wait_s is not None and s.slurm) else -1.0
                      for s in samples])
    fit_target("queue_wait", q_obs >= 0, np.log1p(np.maximum(q_obs, 0.0)),
               lambda p, te: np.expm1(p), x_all[:, FEATURES.index("node_queue_wait_s")], q_obs)
    return out


# ---------------------------------------------------------------- persistence


@dataclass
class ModelInfo:
    """What ``GET /v1/models`` and ``models-v<N>.json`` show for one target.

    ``metric``: :data:`ERROR_METRIC` of the target; ``error`` / ``analytic_error``: the
    held-out error in it (% or s), None when undefined (no held-out row to score).
    """

    target: str
    version: int
    trained_at: float
    samples: int
    metric: str
    error: float | None
    analytic_error: float | None
    source: str


@dataclass
class ModelSet:
    """The trained targets of one version, with metadata; persisted by :class:`ModelStore`."""

    version: int
    trained_at: float
    source: str
    models: dict[str, TargetModel] = field(default_factory=dict)
    recorded: int = 0
    """How many of the training samples were recorded runs (the rest came from the twin;
    0 for sets saved before this field existed)."""

    def info(self) -> list[ModelInfo]:
        """One :class:`ModelInfo` per target, by name; non-finite errors are None."""
        return [ModelInfo(t, self.version, self.trained_at, m.samples, m.metric,
                          finite_or_none(m.error), finite_or_none(m.analytic_error),
                          self.source) for t, m in sorted(self.models.items())]


class ModelStore:
    """Versioned model sets under ``<dir>``: ``models-v<N>.joblib`` + ``models-v<N>.json``.

    ``save`` writes the next version (never overwrites); ``load_latest`` returns the
    newest version that loads, or None. The JSON side file holds the metadata (strict
    JSON, readable without unpickling). A file that does not load (corrupt, or written
    by an incompatible scikit-learn) is logged as a warning and the next-older version
    is tried, so the control plane keeps a learned model rather than falling back to
    the analytic one in silence.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def versions(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem.split("-v")[1]) for p in self.directory.glob("models-v*.joblib"))

    def save(self, models: dict[str, TargetModel], source: str,
             recorded: int = 0) -> ModelSet:
        """Write ``models`` as the next version (``recorded``: see :attr:`ModelSet.recorded`)."""
        import joblib

        self.directory.mkdir(parents=True, exist_ok=True)
        v = (self.versions() or [0])[-1] + 1
        ms = ModelSet(v, time.time(), source, models, recorded)
        tmp = self.directory / f".models-v{v}.tmp"
        joblib.dump(ms, tmp)
        tmp.replace(self.directory / f"models-v{v}.joblib")
        meta = json.dumps([asdict(i) for i in ms.info()], indent=2, allow_nan=False)
        tmp = self.directory / f".models-v{v}.json.tmp"
        tmp.write_text(meta)
        tmp.replace(self.directory / f"models-v{v}.json")
        return ms

    def load_latest(self) -> ModelSet | None:
        import joblib

        for v in reversed(self.versions()):
            path = self.directory / f"models-v{v}.joblib"
            try:
                ms = joblib.load(path)
            except Exception as e:  # noqa: BLE001 - a stale pickle must not stop the control plane
                log.warning("cannot load model set %s (%s: %s); trying the previous version",
                            path, type(e).__name__, e)
                continue
            if isinstance(ms, ModelSet):
                return ms
            log.warning("%s holds a %s, not a ModelSet; trying the previous version",
                        path, type(ms).__name__)
        return None


# ---------------------------------------------------------------- the predictor


@dataclass
class _LearnedMemo:
    """A predictor's memo on one snapshot (key ``learned`` of :meth:`Snapshot.memo`):
    (model output, ood mask) per (target, task features), with the predictor and model
    set it came from (held, so their ids cannot be reused while the memo lives)."""

    predictor: LearnedPredictor
    models: ModelSet | None
    values: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]]


class LearnedPredictor:
    """A :class:`~placement.predict.Predictor` backed by one :class:`ModelSet`.

    ``version`` is ``learned-v<N>`` when a runtime model exists, else the analytic
    version. Per node, out-of-distribution rows fall back to the analytic value;
    :meth:`fallback` explains it for a chosen node.

    The model set is fixed for the predictor's life (``models`` is read-only): to serve
    a new set, build a new predictor (and framework) and publish that reference, so a
    placement batch that holds one framework predicts runtime, energy and queue wait
    and records its version from one and the same set (see
    ``control_plane.models.ModelService.serve``).
    """

    def __init__(self, models: ModelSet | None = None) -> None:
        self.analytic = AnalyticPredictor()
        self._models = models

    @property
    def models(self) -> ModelSet | None:
        return self._models

    @property
    def version(self) -> str:
        if self._models is None or "runtime" not in self._models.models:
            return self.analytic.version
        return f"learned-v{self._models.version}"

    def _x(self, task: Task, snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        r = task.resources
        work = task.work if task.work is not None else self.analytic.default_work_core_s
        return _matrix(np.array([float(work)]), np.array([r.cpu]), np.array([float(r.memory)]),
                       np.array([float(r.gpu)]), snap.speed, snap.cap_cpu,
                       snap.tier.astype(np.float64), snap.idle_watts, snap.max_watts,
                       snap.gpu_watts, snap.queue_wait_s)

    def _model(self, target: str) -> TargetModel | None:
        return None if self._models is None else self._models.models.get(target)

    def _task_key(self, task: Task) -> tuple[float, float, float, float]:
        r = task.resources
        work = task.work if task.work is not None else self.analytic.default_work_core_s
        return (float(work), float(r.cpu), float(r.memory), float(r.gpu))

    def _cache(self, snap: Snapshot) -> dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]]:
        """Per-snapshot memo of (model output, out-of-distribution mask) per target and
        task features, for this predictor and model set; kept on the snapshot so it lives
        exactly as long as it (the features read — speed, capacity, tier, power, queue
        wait — do not change within a snapshot)."""
        memo = snap.memo("learned", dict[tuple[object, ...], _LearnedMemo])
        held = memo.get((id(self), id(self.models)))
        if held is None or held.predictor is not self or held.models is not self.models:
            held = memo[(id(self), id(self.models))] = _LearnedMemo(self, self.models, {})
        return held.values

    def _z(self, target: str, task: Task, snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """(model output, ood mask) for ``task`` over ``snap``'s nodes, memoised."""
        m = self._model(target)
        assert m is not None
        cache = self._cache(snap)
        key = (target, *self._task_key(task))
        hit = cache.get(key)
        if hit is None:
            x, _ = self._x(task, snap)
            hit = (m.model.predict(x), m.ood(x)[0])
            cache[key] = hit
        return hit

    def prefetch(self, tasks: Sequence[Task], snap: Snapshot) -> None:
        """Predict every target for all distinct ``tasks`` over ``snap``'s nodes in one
        scikit-learn call per target (T tasks × n nodes rows) and memoise the results, so
        later per-task calls cost a dictionary lookup. Used by the batch assigner over
        its node-class representatives."""
        if self.models is None or snap.n == 0:
            return
        cache = self._cache(snap)
        keys = list(dict.fromkeys(self._task_key(t) for t in tasks))
        for target in ("runtime", "energy", "queue_wait"):
            m = self._model(target)
            todo = [k for k in keys if (target, *k) not in cache]
            if m is None or not todo:
                continue
            a = np.array(todo, dtype=np.float64)
            rep = np.repeat(np.arange(len(todo)), snap.n)
            tile = np.tile(np.arange(snap.n), len(todo))
            x, _ = _matrix(a[rep, 0], a[rep, 1], a[rep, 2], a[rep, 3], snap.speed[tile],
                           snap.cap_cpu[tile], snap.tier.astype(np.float64)[tile],
                           snap.idle_watts[tile], snap.max_watts[tile], snap.gpu_watts[tile],
                           snap.queue_wait_s[tile])
            z = m.model.predict(x).reshape(len(todo), snap.n)
            ood = m.ood(x)[0].reshape(len(todo), snap.n)
            for i, k in enumerate(todo):
                cache[(target, *k)] = (z[i], ood[i])

    def runtime_s(self, task: Task, snap: Snapshot) -> np.ndarray:
        base = self.analytic.runtime_s(task, snap)
        m = self._model("runtime")
        if m is None or snap.n == 0:
            return base
        z, ood = self._z("runtime", task, snap)
        out: np.ndarray = base * np.exp(z)
        out[ood] = base[ood]
        return out

    def energy_j(self, task: Task, snap: Snapshot, runtime: np.ndarray) -> np.ndarray:
        base = self.analytic.energy_j(task, snap, runtime)
        m = self._model("energy")
        if m is None or snap.n == 0:
            return base
        z, ood = self._z("energy", task, snap)
        out: np.ndarray = base * np.exp(z)
        out[ood] = base[ood]
        return out

    def queue_wait_s(self, task: Task, snap: Snapshot) -> np.ndarray:
        """Predicted queue wait (s) on Slurm nodes; the node's own estimate elsewhere."""
        base = snap.queue_wait_s
        m = self._model("queue_wait")
        if m is None or snap.n == 0:
            return base
        slurm = np.array([nd.site_kind == "slurm" for nd in snap.nodes], dtype=bool)
        if not slurm.any():
            return base
        z, ood = self._z("queue_wait", task, snap)
        out = base.copy()
        use = slurm & ~ood
        out[use] = np.expm1(z[use])
        return out

    def transfer(self, sources: Sequence[DataSource], snap: Snapshot
                 ) -> tuple[np.ndarray, np.ndarray]:
        return self.analytic.transfer(sources, snap)

    def fallback(self, task: Task, snap: Snapshot, i: int) -> str | None:
        """Why node ``i``'s runtime came from the analytic model, or None if it did not."""
        m = self._model("runtime")
        if m is None:
            return "learned runtime model untrained; analytic model used"
        x, _ = self._x(task, snap)
        ood, why = m.ood(x[i:i + 1])
        if ood[0]:
            return f"request out of the learned model's distribution ({why[0]}); analytic model used"
        return None


def twin_history(nodes: Sequence[Any], n: int = 2000, seed: int = 0) -> list[Sample]:
    """Bootstrap history from the digital twin (:mod:`adapters.sim`): ``n`` runs of random
    tasks on random ``nodes`` (``continuum.model.Node``), observed as the twin computes
    them — runtime = work / (speed × min(cpu, node cpu)), energy = runtime × the node's
    watts share, queue wait = the node's own estimate. Work log-uniform 1 s..1 h of
    core-seconds; cpu 0.25..node cpu; memory 64 MiB..4 GiB; gpu 0/1 where the node has
    GPUs. Empty when ``nodes`` is empty."""
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    if not nodes:
        return out
    for _ in range(n):
        nd = nodes[int(rng.integers(len(nodes)))]
        cap = float(nd.capacity.cpu)
        cpu = float(np.clip(2 ** rng.uniform(-2, np.log2(max(cap, 0.25))), 0.25, max(cap, 0.25)))
        work = float(np.exp(rng.uniform(np.log(1.0), np.log(3600.0))))
        gpu = int(rng.integers(0, 2)) if nd.capacity.gpu > 0 else 0
        mem = int(2 ** rng.uniform(26, 32))
        rt = float(runtime_s(work, cpu, np.array([nd.speed]), np.array([cap]))[0])
        e = float(energy_j(np.array([rt]), cpu, np.array([cap]), np.array([nd.power.idle_watts]),
                           np.array([nd.power.max_watts]), gpu,
                           np.array([nd.power.gpu_watts]))[0])
        out.append(Sample(work, cpu, mem, gpu, nd.speed, cap, str(nd.tier), nd.power.idle_watts,
                          nd.power.max_watts, nd.power.gpu_watts, nd.queue_wait_s, rt, e,
                          nd.queue_wait_s if nd.site_kind == "slurm" else None,
                          nd.site_kind == "slurm"))
    return out


__all__ = ["ERROR_METRIC", "FEATURES", "TARGETS", "LearnedPredictor", "ModelInfo", "ModelSet",
           "ModelStore", "Sample", "TargetModel", "finite_or_none", "holdout", "mae", "mape",
           "sample_matrix", "train", "twin_history"]
