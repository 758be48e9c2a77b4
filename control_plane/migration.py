"""The migration controller: move work when it pays, and at once when its node is lost.

It is a *producer* of reconciler actions, never a writer of run state: the reconciler
calls :meth:`MigrationController.on_cycle` after each cycle's own actions and applies
what it returns (:class:`~control_plane.actions.MigrateRun`,
:class:`~control_plane.actions.StartMove`) like its own.

1. **Lost work** (every cycle): an active run (Placed, Dispatched, Running) whose node a
   *successful* inventory of its site no longer lists, or lists as not ready (a device
   whose agent went offline per its heartbeat), for ``migration_lost_grace_s`` as this
   process observed it, ends as ``Migrated`` with the reason once the backend accepted
   the cancel; its task goes back to Ready *without* a retry backoff and without
   counting an attempt against ``retries``; the reconciler runs its next cycle at once
   to re-place it. A site whose inventory or health check fails (Unreachable: a
   slurmrestd restart, a broker blip) says nothing about its nodes: its runs are left
   alone and their grace starts again once the site answers. A draining site's runs
   finish where they are. If the backend refuses the cancel the run stays active and
   the move is proposed again next cycle (as the reconciler's workflow stop does), so
   the original never keeps running unobserved.
   Runs on a node labelled ``continuum.io/autonomous=true`` (a KubeEdge edge node,
   whose pods go on while it is disconnected) are never moved off it.
2. **Re-evaluation** (every ``migration_interval_s``): queued jobs (Dispatched, not yet
   running) and running services are scored on their current node and on the best
   alternative with the control plane's placement framework. :func:`decide` moves one
   only when the expected gain over ``migration_horizon_s`` beats the migration cost by
   the hysteresis margin, the run has dwelt at least ``migration_min_dwell_s`` on its
   node, and fewer than ``migration_max_per_cycle`` moved this cycle. A moved queued
   job is cancelled and re-placed (break-before-make is harmless: it never started),
   at the cost of the queue age it gives up (its place in the backend's queue, e.g.
   Slurm's age priority factor), charged as downtime;
   a running service is moved make-before-break: a new run is placed on the target
   while the old one keeps serving (the new run's ``replaces_run_id`` names it, durable
   in the store); once the new run is Running the old one is cancelled and ends
   ``Migrated``; if the new run fails the move is aborted and the old run goes on
   serving (the failure is not counted against the task's ``retries``: a move costs no
   attempt). Those two ends of a move are rules of :mod:`control_plane.decide`. A
   service's state bytes are taken as its memory request.

Every migration is an event ``RunMigrated`` with its reason and figures, and counts in
``continuum_migrations_total{reason}``.

Units of :func:`decide`: the placement objective's cost (0 = best node in every term,
1 = worst; :mod:`placement.batch`) per second, so ``gain = (cost_now − cost_best) ×
horizon`` and ``migration cost = downtime_s + state_bytes·8 / bandwidth_bps`` (s at
cost 1: a second of downtime is the worst a second can be). Hysteresis is relative
too: the current node's cost must exceed the best one's by more than ``hysteresis``
of itself, so a move never chases a negligible difference even when it costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from continuum.model import Node, Resources, RunState, SiteHealth, Task, TaskState, WorkflowDocument
from control_plane.actions import Action, MigrateRun, StartMove
from control_plane.federation import Federation
from control_plane.settings import Settings
from control_plane.store import (
    ACTIVE_RUN_STATES,
    DocumentCache,
    RunRow,
    Store,
    TaskRow,
    chunks,
    new_id,
    read_rows,
)
from monitoring.topology import TopologyModel
from placement import Framework, Snapshot

log = logging.getLogger(__name__)

AUTONOMOUS_LABEL = "continuum.io/autonomous"
"""Node label (value ``true``) of a node whose work goes on while it is disconnected
(set by the KubeEdge adapter on edge nodes); lost-work migration never moves its runs."""


@dataclass(frozen=True)
class Candidate:
    """A run considered for a move.

    ``cost_now``/``cost_best``: objective cost (0..1) on the current node and on the best
    other node; ``dwell_s``: seconds since it was placed (or last moved);
    ``downtime_s``: interruption a move causes; ``state_bytes``: state to copy;
    ``bandwidth_bps``: bandwidth for the copy (bit/s).
    """

    cost_now: float
    cost_best: float
    dwell_s: float
    downtime_s: float = 0.0
    state_bytes: int = 0
    bandwidth_bps: float = 100e6


@dataclass(frozen=True)
class Verdict:
    """Whether to move, why, and the figures (gain and cost in cost-seconds)."""

    move: bool
    reason: str
    gain: float
    cost: float


def decide(c: Candidate, horizon_s: float, hysteresis: float, min_dwell_s: float) -> Verdict:
    """Move iff dwell ≥ ``min_dwell_s``, gain > cost × (1 + ``hysteresis``), gain > 0 and
    cost_now − cost_best > ``hysteresis`` × cost_now (the relative margin, which also
    holds when the move itself costs nothing, e.g. a queued job that has not waited).

    gain = (cost_now − cost_best) × horizon_s; cost = downtime_s + state_bytes·8 /
    bandwidth_bps. Raises nothing; a non-positive bandwidth makes the cost infinite.
    """
    gain = (c.cost_now - c.cost_best) * horizon_s
    copy_s = c.state_bytes * 8 / c.bandwidth_bps if c.bandwidth_bps > 0 else float("inf")
    cost = c.downtime_s + copy_s
    figures = f"gain {gain:.1f} vs cost {cost:.1f} cost-s over {horizon_s:g}s"
    if c.dwell_s < min_dwell_s:
        return Verdict(False, f"dwell {c.dwell_s:.0f}s < minimum {min_dwell_s:.0f}s", gain, cost)
    if gain <= 0 or gain <= cost * (1 + hysteresis):
        return Verdict(False, f"not worth it: {figures} (hysteresis {hysteresis:.0%})", gain, cost)
    if c.cost_now - c.cost_best <= hysteresis * c.cost_now:
        return Verdict(False, f"not worth it: cost {c.cost_best:.3f} vs {c.cost_now:.3f} here "
                       f"is within the hysteresis margin ({hysteresis:.0%})", gain, cost)
    return Verdict(True, f"better node: {figures}", gain, cost)


class MigrationController:
    """Lost-work re-placement and cost-aware migration: a producer of reconciler actions.

    It reads the store and the federation and returns
    :class:`~control_plane.decide.MigrateRun` and :class:`~control_plane.decide.StartMove`
    actions from :meth:`on_cycle`; the reconciler's ``apply`` carries them out (it is the
    only writer of run state). Finishing or aborting a make-before-break move is a rule
    of :mod:`control_plane.decide`. ``framework`` returns the served placement framework.
    """

    def __init__(self, settings: Settings, store: Store, federation: Federation,
                 network: TopologyModel, framework: Callable[[], Framework]) -> None:
        self.settings = settings
        self.store = store
        self.federation = federation
        self.network = network
        self.framework = framework
        self._last_eval = 0.0
        self._lost_since: dict[str, float] = {}
        """run id → when this process first saw its node not placeable."""
        self._next_lost_check = 0.0
        """When :meth:`replace_lost` runs next (epoch s): every half inventory interval,
        sooner when a grace ends (each run costs one row of a scan of the active runs)."""
        self._docs = DocumentCache()

    def on_cycle(self, now: float) -> list[Action]:
        """The moves to make now (called once per reconcile cycle, after its actions)."""
        st = self.settings
        actions: list[Action] = []
        if now >= self._next_lost_check:  # the inventory changes at most that often
            actions = self.replace_lost(now)
            self._next_lost_check = now + st.inventory_interval_s / 2
            if self._lost_since:  # a grace that ends sooner: check then
                self._next_lost_check = min(self._next_lost_check, min(
                    self._lost_since.values()) + st.migration_lost_grace_s)
        if st.migration_interval_s > 0 and now - self._last_eval >= st.migration_interval_s:
            self._last_eval = now
            actions += self.reevaluate(now, skip={a.run_id for a in actions
                                                  if isinstance(a, MigrateRun)})
        return actions

    # ------------------------------------------------------------ lost work

    def replace_lost(self, now: float) -> list[Action]:
        """A :class:`MigrateRun` for every active run whose node a successful inventory has
        shown gone or not ready for the grace period (counted from this process's first
        such observation, so a restarted control plane that has not relearnt its
        inventory yet does not move healthy work).

        A run on an Unreachable site is left alone (nothing is known of its node) and its
        grace restarts when the site answers again; a run whose cancel the backend refuses
        stays active, so it is proposed again next cycle.
        """
        sites = {rt.spec.name: (rt, {n.id: n for n in rt.nodes})
                 for rt in self.federation.sites()}
        grace = self.settings.migration_lost_grace_s
        out: list[Action] = []
        seen: set[str] = set()
        with self.store.session() as s:
            runs = s.execute(select(RunRow.id, RunRow.site, RunRow.node).where(
                RunRow.state.in_(ACTIVE_RUN_STATES))).all()
            for run in runs:
                why = self._lost(run.site, run.node, sites)
                if why is None:
                    continue
                seen.add(run.id)
                since = self._lost_since.setdefault(run.id, now)
                if now - since < grace:
                    continue  # e.g. a restarted control plane still relearning its inventory
                out.append(MigrateRun(run.id, "node-lost", f"{why} for {now - since:.1f}s"))
        self._lost_since = {k: v for k, v in self._lost_since.items() if k in seen}
        return out

    @staticmethod
    def _lost(site: str | None, node: str | None,
              sites: dict[str, tuple[Any, dict[str, Node]]]) -> str | None:
        """Why a run's ``node`` on ``site`` counts as lost, from the site's last
        successful inventory (``sites``: name → (runtime, node id → node)); None when it
        is fine or when nothing is known (site Unreachable or removed — the reconciler
        fails the runs of a removed site)."""
        rt, by_id = sites.get(site or "", (None, {}))
        if node is None or rt is None or rt.health == SiteHealth.Unreachable:
            return None
        nd = by_id.get(node)
        if nd is None:
            return f"node {node} left the inventory"
        if not nd.ready:
            if nd.labels.get(AUTONOMOUS_LABEL) == "true":
                return None  # a KubeEdge edge node: its pods go on while it is disconnected
            return f"node {node} is not ready (offline)"
        return None

    # ------------------------------------------------------------ re-evaluation

    def _doc(self, s: Session, workflow_id: str) -> WorkflowDocument:
        return self._docs.get(s, workflow_id)

    def reevaluate(self, now: float, skip: set[str] | None = None) -> list[Action]:
        """Score queued jobs and running services on their node vs the best alternative;
        the moves worth making (at most ``migration_max_per_cycle``), except of runs in
        ``skip``. Running jobs are left alone: they finish where they are.
        """
        from placement import PlacementRequest
        from placement.batch import BatchAssigner

        st = self.settings
        nodes = self.federation.placeable_nodes()
        if not nodes:
            return []
        out: list[Action] = []
        skip = skip or set()
        with self.store.session() as s:
            # the columns a candidate needs, not whole rows (a run's placement, handle and
            # accounting are JSON the scoring never reads)
            runs = s.execute(select(*_CANDIDATE_COLUMNS).where(
                RunRow.state.in_([RunState.Dispatched, RunState.Running]))).all()
            self._docs.load(s, [r.workflow_id for r in runs])  # one query, not one each
            tasks = [self._docs.task(s, r.workflow_id, r.task_name) for r in runs]
            # each candidate is scored on its own node as if it were not there (else its
            # own cores and load make its node look worse than an equal empty one, and a
            # service would hop between identical nodes)
            nodes = _without(nodes, list(zip(runs, tasks, strict=True)))
            snap = Snapshot(nodes=nodes, network=self.network, now=now)
            assigner = BatchAssigner(snap.copy(), self.framework())
            assert assigner.classes is not None
            # a running job finishes where it is: only queued jobs and services are
            # candidates; their tasks' states and other active runs in one query each
            candidates = [(run, task) for run, task in zip(runs, tasks, strict=True)
                          if run.node in snap.index and run.id not in skip
                          and (run.state != RunState.Running or task.kind == "service")]
            task_ids = [run.task_id for run, _ in candidates]
            task_rows = read_rows(s, TaskRow, task_ids, ["state"])
            active = _active_runs_of(s, task_ids)
            for run, task in candidates:
                if len(out) >= st.migration_max_per_cycle:
                    break
                row = task_rows.get(run.task_id)
                if row is None or row.state != TaskState.Running:
                    continue
                service = task.kind == "service"
                if active.get(run.task_id, set()) - {run.id}:
                    continue  # a move of this task is already under way
                doc = self._doc(s, run.workflow_id)
                req = PlacementRequest(run.id, task, doc.spec.objective)
                costs = assigner.node_costs(req)
                here = float(costs[snap.index[run.node]])
                best = self._best_other(snap, costs, run.node)
                if best is None or not np.isfinite(here):
                    continue
                since = run.placed_at.timestamp() if run.placed_at else now
                state_bytes = task.resources.memory if service else 0
                # a queued job re-queued elsewhere gives up the time it has waited (its
                # age in the backend's queue); a service moves make-before-break: no gap
                queued = (now - run.dispatched_at.timestamp()
                          if not service and run.dispatched_at else 0.0)
                v = decide(Candidate(here, best[1], now - since, downtime_s=max(0.0, queued),
                                     state_bytes=state_bytes,
                                     bandwidth_bps=st.migration_bandwidth_bps),
                           st.migration_horizon_s, st.migration_hysteresis,
                           st.migration_min_dwell_s)
                if not v.move:
                    continue
                if not service:
                    out.append(MigrateRun(run.id, "better-node",
                                          f"queued job moves from {run.node} toward {best[0]}: "
                                          f"{v.reason}"))
                elif (move := self._start_move(run, task, doc, best[0], v, now)) is not None:
                    out.append(move)
            live = {r.workflow_id for r in runs}
            self._docs.keep_only(live)
        return out

    def _start_move(self, run: Any, task: Task, doc: WorkflowDocument, target: str,
                    v: Verdict, now: float) -> StartMove | None:
        """Make-before-break: a new run on ``target``; the old one serves until it runs."""
        from placement import PlacementRequest, Snapshot, plan

        node = self.federation.node(target)
        if node is None:
            return None
        snap = Snapshot(nodes=[node], network=self.network, now=now)
        out = plan([PlacementRequest(run.id, task, doc.spec.objective)], snap,
                   self.framework())[0]
        if out.decision is None:
            return None
        dec = out.decision
        dec.reasons.append(f"migration of run {run.id} from {run.node}: {v.reason}")
        new = new_id("run")
        return StartMove(
            run.id, new, dec.site, dec.node, dec.wire(),
            f"better-node: service moves make-before-break from {run.node} to {dec.node} "
            f"as run {new}: {v.reason}",
            f"placed on {dec.node} ({dec.tier.value}) to replace run {run.id}")

    @staticmethod
    def _best_other(snap: Snapshot, costs: np.ndarray, current: str
                    ) -> tuple[str, float] | None:
        """The cheapest node other than ``current`` under ``costs`` (the placement
        objective per node, ``inf`` where the run does not fit), or None."""
        others = costs.copy()
        if current in snap.index:
            others[snap.index[current]] = np.inf
        k = int(np.argmin(others))
        return None if not np.isfinite(others[k]) else (snap.ids[k], float(others[k]))


_CANDIDATE_COLUMNS = (RunRow.id, RunRow.workflow_id, RunRow.task_id, RunRow.task_name,
                      RunRow.state, RunRow.node, RunRow.placed_at, RunRow.dispatched_at)
"""The run columns re-evaluation reads (:meth:`MigrationController.reevaluate`)."""


def _active_runs_of(s: Session, task_ids: list[int]) -> dict[int, set[str]]:
    """Task id → the ids of its active runs (those of ``task_ids`` with any), one query
    per 500 ids."""
    out: dict[int, set[str]] = {}
    for chunk in chunks(list(dict.fromkeys(task_ids))):
        for tid, rid in s.execute(select(RunRow.task_id, RunRow.id).where(
                RunRow.task_id.in_(chunk), RunRow.state.in_(ACTIVE_RUN_STATES))):
            out.setdefault(tid, set()).add(rid)
    return out


def _without(nodes: list[Node], footprints: list[tuple[Any, Task]]) -> list[Node]:
    """``nodes`` with the movable runs taken off their nodes: a queued job's or running
    service's requested resources added back to its node's ``free`` (capped at
    ``allocatable``) and a running service's cores (``cpu / capacity.cpu``) taken off the
    node's measured utilisation. Other runs stay where they are."""
    by_node: dict[str, list[tuple[Any, Task]]] = {}
    for run, task in footprints:
        movable = run.state == RunState.Dispatched or task.kind == "service"
        if run.node and movable:
            by_node.setdefault(run.node, []).append((run, task))
    out = []
    for nd in nodes:
        mine = by_node.get(nd.id)
        if not mine:
            out.append(nd)
            continue
        cpu = sum(t.resources.cpu for _, t in mine)
        update: dict[str, object] = {}
        if nd.free is not None:
            a = nd.allocatable
            update["free"] = Resources(
                cpu=min(a.cpu, nd.free.cpu + cpu),
                memory=min(a.memory, nd.free.memory + sum(t.resources.memory for _, t in mine)),
                gpu=min(a.gpu, nd.free.gpu + sum(t.resources.gpu for _, t in mine)))
        running = sum(t.resources.cpu for r, t in mine if r.state == RunState.Running)
        if nd.utilisation is not None and running and nd.capacity.cpu > 0:
            update["utilisation"] = max(0.0, nd.utilisation - running / nd.capacity.cpu)
        out.append(nd.model_copy(update=update))
    return out


__all__ = ["Candidate", "MigrationController", "Verdict", "decide"]
