"""Training, persistence and serving of the learned predictors: :class:`ModelService`.

It owns the control plane's :class:`~placement.learned.LearnedPredictor` (loaded from
``<state_dir>/models`` at start), trains it from the runs the store recorded plus a
bootstrap history from the digital twin (:func:`placement.learned.twin_history` over the
current inventory), persists every trained set as a new version, retrains on a schedule
(``settings.model_retrain_interval_s``; 0 = only on demand) and exports the held-out error
per target to ``/metrics`` (``continuum_model_mape_percent`` for runtime and energy,
``continuum_model_mae_seconds`` for queue wait). The routes are in
:mod:`control_plane.routes_models`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from sqlalchemy import select

from continuum.errors import Problem, ValidationFailed
from continuum.model import Node, RunState, Task
from control_plane.settings import Settings
from control_plane.store import RunRow, Store, TaskRow
from monitoring.metrics import ControlPlaneMetrics
from placement import default_framework
from placement.batch import ClassCachedPredictor
from placement.learned import LearnedPredictor, ModelSet, ModelStore, Sample, train, twin_history
from placement.plugins.load import with_load
from placement.predict import DEFAULT_WORK_CORE_S

log = logging.getLogger(__name__)

SOURCES = ("auto", "store", "twin")


class ModelService:
    """Training, persistence and serving of the learned predictors of one control plane."""

    def __init__(self, settings: Settings, store: Store, nodes: Callable[[], list[Node]],
                 metrics: ControlPlaneMetrics) -> None:
        """``store``: the runs to learn from; ``nodes``: the current inventory (features of
        the nodes runs ran on, and the twin's bootstrap); ``metrics``: where the held-out
        errors and the served version are exported."""
        self.settings = settings
        self.db = store
        self.nodes = nodes
        self.metrics = metrics
        self.store = ModelStore(settings.state_dir / "models")
        self.predictor = LearnedPredictor(self.store.load_latest())
        """The served predictor; replaced (never changed) by :meth:`serve`."""
        self.framework = with_load(default_framework(
            ClassCachedPredictor(self.predictor),
            fragmentation_weight=settings.placement_fragmentation_weight))
        """Placement's plugins with the served predictor, plus NodeLoad (live metrics).
        A placement batch reads this reference once and uses it throughout."""
        self.framework.mode = settings.placement_mode
        self._lock = threading.Lock()
        latest = self.predictor.models
        # the schedule survives restarts: it counts from the served set's training time
        self._last_train = latest.trained_at if latest is not None else time.time()
        self._export()

    # ------------------------------------------------------------ data

    def store_samples(self) -> list[Sample]:
        """Succeeded runs with a runtime, joined with their task spec and node.

        The node's features come from the current inventory (runs on nodes no longer
        known are skipped). Queue wait = started − dispatched, for Slurm runs.
        """
        nodes = {nd.id: nd for nd in self.nodes()}
        out: list[Sample] = []
        with self.db.session() as s:
            rows = s.execute(
                select(RunRow, TaskRow.spec).join(TaskRow, TaskRow.id == RunRow.task_id)
                .where(RunRow.state == RunState.Succeeded, RunRow.runtime_s.is_not(None))
            ).all()
            for run, spec in rows:
                nd = nodes.get(run.node or "")
                if nd is None or not run.runtime_s:
                    continue
                task = Task.model_validate(spec)
                r = task.resources
                wait = None
                if run.started_at and run.dispatched_at:
                    wait = max(0.0, (run.started_at - run.dispatched_at).total_seconds())
                out.append(Sample(
                    work=task.work if task.work is not None else DEFAULT_WORK_CORE_S, cpu=r.cpu,
                    memory=r.memory, gpu=r.gpu, speed=nd.speed, cap_cpu=nd.capacity.cpu,
                    tier=str(nd.tier), idle_watts=nd.power.idle_watts,
                    max_watts=nd.power.max_watts, gpu_watts=nd.power.gpu_watts,
                    node_queue_wait_s=nd.queue_wait_s, runtime_s=float(run.runtime_s),
                    energy_j=run.energy_j, queue_wait_s=wait, slurm=nd.site_kind == "slurm"))
        return out

    # ------------------------------------------------------------ training

    def retrain(self, source: str = "auto", *, scheduled: bool = False) -> dict[str, Any]:
        """Train on ``source`` (``store``: recorded runs; ``twin``: bootstrap only;
        ``auto``: both), save a new version, serve it. Returns :meth:`view` plus
        ``trainedOn`` (sample counts).

        ``scheduled``: a retrain of the schedule, which keeps the served set when that set
        learned from recorded runs and the store holds none any more (retention deleted
        them after a quiet ``workflow_retention_s``): a set from the twin alone would
        forget what the recorded runs taught.

        Raises:
            ValidationFailed: unknown ``source``, no sample at all to train on, or (only
                when ``scheduled``) no recorded run left while the served set had some.
        """
        if source not in SOURCES:
            raise ValidationFailed([Problem(
                ["query", "source"],
                f"unknown training source {source!r}; use one of: {', '.join(SOURCES)}",
                "unknown_source")])
        with self._lock:
            recorded = self.store_samples() if source in ("auto", "store") else []
            served = self.predictor.models
            if scheduled and not recorded and served is not None and served.recorded:
                raise ValidationFailed([Problem(
                    ["query", "source"],
                    f"no recorded run left (the served v{served.version} learned from "
                    f"{served.recorded}); keeping it", "no_recorded_runs")])
            boot = (twin_history(self.nodes(), self.settings.model_bootstrap_samples)
                    if source in ("auto", "twin") else [])
            samples = recorded + boot
            if not samples:
                raise ValidationFailed([Problem(
                    ["query", "source"],
                    f"no samples to train on from {source!r}: register a site (the twin "
                    "bootstraps from its inventory) or let some runs succeed first",
                    "no_samples")])
            models = train(samples)
            if not models:
                raise ValidationFailed([Problem(
                    ["query", "source"],
                    f"too few samples ({len(samples)}) for any target: let more runs "
                    "succeed, or train with source=twin", "too_few_samples")])
            ms = self.store.save(models, f"{source}: {len(recorded)} recorded + "
                                         f"{len(boot)} twin runs", recorded=len(recorded))
            self.serve(ms)
            self._last_train = time.time()
            log.info("models v%d trained on %d recorded + %d twin runs", ms.version,
                     len(recorded), len(boot))
        view = self.view()
        view["trainedOn"] = {"recorded": len(recorded), "twin": len(boot)}
        return view

    def on_cycle(self, now: float) -> None:
        """Start a retrain in the background when the schedule says so (called once per
        reconcile cycle; training never holds up the cycle)."""
        every = self.settings.model_retrain_interval_s
        if every <= 0 or now - self._last_train < every or self._lock.locked():
            return
        self._last_train = now

        def run() -> None:
            try:
                self.retrain("auto", scheduled=True)
            except ValidationFailed as e:
                log.info("scheduled retrain skipped: %s", e)
            except Exception:
                log.exception("scheduled retrain failed; the current model stays")

        threading.Thread(target=run, name="model-retrain", daemon=True).start()

    def serve(self, ms: ModelSet) -> None:
        """Serve ``ms`` from the next placement batch on.

        A new predictor and framework are built and published by replacing the
        reference ``self.framework`` (the reconciler and the migration controller read it
        per batch); a batch already placing
        keeps the framework it read, so each decision's runtime, energy, queue wait and
        recorded model version come from one model set, even when a background retrain
        lands mid-batch.
        """
        predictor = LearnedPredictor(ms)
        framework = replace(self.framework, predictor=ClassCachedPredictor(predictor))
        self.predictor, self.framework = predictor, framework
        self._export()

    def _export(self) -> None:
        ms: ModelSet | None = self.predictor.models
        gauges = {"mape_percent": self.metrics.model_mape,
                  "mae_seconds": self.metrics.model_mae}
        for g in gauges.values():
            g.clear()  # a target the served set lacks has no value
        for info in ms.info() if ms else []:
            g = gauges[info.metric]
            g.labels(info.target, "learned").set(
                info.error if info.error is not None else float("nan"))
            g.labels(info.target, "analytic").set(
                info.analytic_error if info.analytic_error is not None else float("nan"))
        self.metrics.model_version.set(ms.version if ms else 0)

    def view(self) -> dict[str, Any]:
        ms = self.predictor.models
        return {
            "version": self.predictor.version,
            "fallback": self.predictor.analytic.version,
            "retrainIntervalS": self.settings.model_retrain_interval_s,
            "targets": [{_camel(k): v for k, v in asdict(i).items()}
                        for i in (ms.info() if ms else [])],
        }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)

__all__ = ["SOURCES", "ModelService"]
