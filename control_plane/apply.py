"""The reconciler's ``apply``: the only code that calls adapters (``submit``, ``cancel``,
``release``) and writes run and task rows.

:meth:`Applier.apply` carries out a list of :data:`~control_plane.decide.Action` in
order; consecutive row writes share one transaction, and every adapter call is made
outside a transaction (a slow backend never holds the store's write lock). Each action
re-checks the row it changes (a run that moved on since it was observed is left alone),
so applying an action twice is harmless.

On a replicated control plane the applier writes through the leader's fenced store
(:meth:`control_plane.store.Store.fenced`, :mod:`control_plane.leader`): every write
transaction, and a fence check before every backend call, carries the leader's epoch.

Placement runs here (:class:`~control_plane.decide.PlaceTasks`): it needs the live
inventory, the served predictors and the artifacts' sizes, and it is a pure function
of its :class:`~placement.Snapshot`, tested on its own; keeping it out of ``decide``
keeps the decisions testable with plain data. A failed submit is handed back to the
decisions (:meth:`~control_plane.decide.Decider.submit_failed`).

Why one module of this size: it is the single writer of run and task state
(docs/architecture.md), and keeping every write and every adapter call in one class is the
point of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from adapters.base import ArtifactIn, ArtifactOut, Handle, RunStatus, TaskRun
from adapters.capabilities import FindsWork
from continuum.errors import AdapterError, TransientError
from continuum.model import Node, RunState, Task, TaskState, WorkflowDocument, WorkflowState
from control_plane import decide as d
from control_plane.artifact_access import ArtifactCapabilities, Mode
from control_plane.decide import Action, Decider
from control_plane.federation import Federation
from control_plane.settings import Settings
from control_plane.store import (
    ACTIVE_RUN_STATES,
    ArtifactRow,
    ColumnRow,
    DocumentCache,
    RunRow,
    Store,
    TaskRow,
    WorkflowRow,
    add_event,
    chunks,
    failed_nodes,
    new_id,
    read_rows,
    table_of,
)
from monitoring.metrics import ControlPlaneMetrics
from monitoring.topology import TopologyModel
from placement import DataSource, Framework, PlacementRequest, Snapshot, SnapshotCache, plan

log = logging.getLogger(__name__)

IO_BATCH = 200
"""Most runs submitted (or released) between two commits: their rows are read in one
transaction and their handles written in one, so a batch costs two commits, not one per
run, while a crash in the middle of one re-submits at most this many runs (idempotently:
the request id is the run id)."""

REMOVE_WAIT_S = 10.0
"""How long site removal waits for the backend to report its cancelled work ended (s)."""


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)



class Applier:
    """Carries out actions. ``framework``: the placement framework for the next batch;
    ``wake``: runs the reconciler's next cycle now (after a placement, to dispatch)."""

    def __init__(self, store: Store, federation: Federation, settings: Settings,
                 metrics: ControlPlaneMetrics, network: TopologyModel,
                 framework: Callable[[], Framework | None], wake: Callable[[], None],
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.federation = federation
        self.settings = settings
        self.metrics = metrics
        self.network = network
        self.framework = framework
        self.wake = wake
        self.clock = clock
        self.capabilities = ArtifactCapabilities.for_state_dir(
            settings.state_dir, settings.artifact_capability_ttl_s)
        """Mints the per-run artifact capabilities carried in the URLs a run is handed."""
        self._docs = DocumentCache()
        self.snapshots = SnapshotCache()
        """The placement snapshot of the inventory, rebuilt only when the federation's
        inventory or the network changed since the last batch (:meth:`_snapshot`)."""
        self.moves = 0
        """Runs migrated or moves started so far (a producer's actions that took effect)."""

    def apply(self, actions: Sequence[Action], decider: Decider | None = None) -> None:
        """Carry out ``actions`` in order. ``decider`` gets the outcome of a failed submit
        (its actions are applied at once); without one, the next cycle decides."""
        writes: list[Action] = []
        batch: list[d.Dispatch | d.Release] = []  # consecutive submits or releases
        for a in actions:
            if isinstance(a, d.Dispatch | d.Release):
                if batch and type(batch[0]) is not type(a) or len(batch) == IO_BATCH:
                    self._io_batch(batch, decider)
                    batch = []
                self._write(writes)
                writes = []
                batch.append(a)
                continue
            self._io_batch(batch, decider)
            batch = []
            if isinstance(a, d.StopWorkflow | d.MigrateRun | d.PlaceTasks | d.RemoveSite):
                self._write(writes)
                writes = []
                self._io(a, decider)
            else:
                writes.append(a)
        self._io_batch(batch, decider)
        self._write(writes)

    def dispatch_placed(self, task_ids: Sequence[int]) -> int:
        """Submit the Placed runs of ``task_ids`` (those placement just made) now, in
        batches of :data:`IO_BATCH`, as :meth:`_dispatch` does; a refused submit leaves
        its run Placed for the next cycle's decisions (no decider here: the run is not in
        this cycle's). Returns how many runs were found Placed."""
        with self.store.session() as s:
            ids = [rid for chunk in chunks(list(dict.fromkeys(task_ids)))
                   for rid in s.scalars(select(RunRow.id).where(
                       RunRow.task_id.in_(chunk), RunRow.state == RunState.Placed))]
        self.apply([d.Dispatch(rid) for rid in ids])
        return len(ids)

    def _io_batch(self, batch: Sequence[d.Dispatch | d.Release],
                  decider: Decider | None) -> None:
        if not batch:
            return
        ids = [a.run_id for a in batch]
        if isinstance(batch[0], d.Dispatch):
            self._dispatch(ids, decider)
        else:
            self._release(ids)

    def _write(self, actions: Sequence[Action]) -> None:
        if not actions:
            return
        now = self.clock()
        with self.store.session() as s:
            # the columns the actions read and change, in one Core query per table (and
            # the predictions of the runs that succeed: they are scored), the
            # changes written back in one executemany UPDATE per table and set of columns
            run_ids = [rid for a in actions if (rid := getattr(a, "run_id", None))]
            task_ids = [tid for a in actions if (tid := getattr(a, "task_id", None))]
            wf_ids = [a.workflow_id for a in actions if isinstance(a, d.FinishWorkflow)]
            scored = [a.run_id for a in actions
                      if isinstance(a, d.SetRunState) and a.state == RunState.Succeeded]
            rows = _Rows(read_rows(s, RunRow, run_ids, _RUN_COLUMNS),
                         read_rows(s, TaskRow, task_ids, _TASK_COLUMNS),
                         read_rows(s, WorkflowRow, wf_ids, _WORKFLOW_COLUMNS))
            for rid, predicted in (read_predictions(s, scored) if scored else {}).items():
                # the part of the placement scored, not its explanation; read, not a change
                rows.runs[rid].values()["placement"] = {"predicted": predicted}
            for a in actions:
                self._write_one(s, a, now, rows)
            self.store.write_rows(s, RunRow, rows.runs.values())
            self.store.write_rows(s, TaskRow, rows.tasks.values())
            self.store.write_rows(s, WorkflowRow, rows.workflows.values())

    def _write_one(self, s: Session, a: Action, now: float, rows: _Rows) -> None:
        if isinstance(a, d.SetRunState | d.RecordStatus | d.DispatchRetry | d.AbortMove):
            run = rows.runs.get(a.run_id)
            if run is None or not run.state.active:
                return
            if isinstance(a, d.RecordStatus):
                self._record(run, a.status)
            elif isinstance(a, d.SetRunState):
                self._transition(s, run, a, now)
            elif isinstance(a, d.DispatchRetry):  # once per distinct refusal (decide)
                log.warning("run %s: site %s refused the submit, retrying: %s", run.id,
                            run.site, a.error)
                run.reason = a.error
                add_event(s, "DispatchRetry", a.error, workflow_id=run.workflow_id,
                          run_id=run.id)
            else:
                add_event(s, "MigrationAborted", a.message, workflow_id=run.workflow_id,
                          run_id=run.id)
            return
        if isinstance(a, d.StartMove):
            self._start_move(s, a, rows.runs.get(a.run_id))
            return
        if isinstance(a, d.FinishWorkflow):
            wf = rows.workflows.get(a.workflow_id)
            if wf is not None and not wf.state.terminal:
                self._finish_workflow(s, wf, a.state, a.reason)
            return
        if not isinstance(a, d.RetryTask | d.FailTask | d.SucceedTask | d.MarkTaskReady
                          | d.CancelTask):
            raise TypeError(f"not a write action: {a!r}")
        task = rows.tasks.get(a.task_id)
        if task is None:
            return
        if isinstance(a, d.RetryTask) and task.state == TaskState.Running:
            task.state, task.not_before, task.reason = TaskState.Ready, _ts(a.not_before), a.reason
            add_event(s, "TaskRetry", a.reason, workflow_id=task.workflow_id, run_id=a.run_id)
        elif isinstance(a, d.FailTask) and task.state == TaskState.Running:
            task.state, task.reason = TaskState.Failed, a.reason
            add_event(s, "TaskFailed", a.reason, workflow_id=task.workflow_id, run_id=a.run_id)
        elif isinstance(a, d.SucceedTask) and task.state == TaskState.Running:
            task.state, task.reason = TaskState.Succeeded, ""
        elif isinstance(a, d.MarkTaskReady) and task.state == TaskState.Waiting:
            task.state, task.reason = TaskState.Ready, ""
            add_event(s, "TaskReady", f"task {task.name} is ready", workflow_id=task.workflow_id)
        elif isinstance(a, d.CancelTask) and task.state == TaskState.Waiting:
            task.state, task.reason = TaskState.Cancelled, a.reason

    def _io(self, a: Action, decider: Decider | None) -> None:
        if isinstance(a, d.StopWorkflow):
            self._stop_workflow(a)
        elif isinstance(a, d.MigrateRun):
            self._migrate(a)
        elif isinstance(a, d.PlaceTasks):
            if self._place_batch(a.task_ids):
                self.wake()  # the next cycle dispatches the new runs
        elif isinstance(a, d.RemoveSite):
            self.remove_site(a)

    # ------------------------------------------------------------ row writes

    def _doc(self, s: Session, workflow_id: str) -> WorkflowDocument:
        return self._docs.get(s, workflow_id)

    def _set_run_state(self, s: Session, run: RunRow | ColumnRow, state: RunState,
                       message: str) -> None:
        if run.state == state:
            return
        run.state = state
        self.metrics.run_transitions.labels(state.value).inc()
        add_event(s, f"Run{state.value}", message, workflow_id=run.workflow_id, run_id=run.id)
        # a run that ended otherwise than it should (failed, cancelled, migrated) at INFO;
        # the steps every run takes (placed, dispatched, running, succeeded: its events)
        # at DEBUG — a line per succeeded task was ~30 µs of a busy reconciler's CPU each,
        # and the event says the same
        log.log(logging.INFO if state.terminal and state != RunState.Succeeded
                else logging.DEBUG, "run %s (%s/%s): %s — %s",
                run.id, run.workflow_id, run.task_name, state.value, message)

    @staticmethod
    def _record(run: RunRow | ColumnRow, st: RunStatus) -> None:
        if st.started_at and run.started_at is None:
            run.started_at = st.started_at
        run.output_tail = st.output_tail or run.output_tail
        run.simulated = run.simulated or st.simulated

    def _transition(self, s: Session, run: RunRow | ColumnRow, a: d.SetRunState,
                    now: float) -> None:
        st = a.status
        if st is not None:
            self._record(run, st)
        if a.reason is not None:
            run.reason = a.reason
        if a.state == RunState.Running:
            run.started_at = run.started_at or _ts(now)
        elif a.state.terminal:
            run.finished_at = (st.finished_at if st is not None else None) or _ts(now)
            if st is not None:
                run.exit_code, run.bytes_in, run.bytes_out = st.exit_code, st.bytes_in, st.bytes_out
                run.energy_j = st.energy_j
                run.cpu_time_s, run.max_rss_bytes = st.cpu_time_s, st.max_rss_bytes
                run.accounting = st.accounting
                self.metrics.bytes_moved.labels("in").inc(st.bytes_in)
                self.metrics.bytes_moved.labels("out").inc(st.bytes_out)
            run.runtime_s = a.runtime_s
        if a.state == RunState.Succeeded:
            for rec in st.outputs if st is not None else []:
                art = s.get(ArtifactRow, (run.workflow_id, rec.name))
                if art is not None and art.run_id is None:
                    art.run_id, art.node = run.id, run.node
            self.metrics.observe_prediction(run.site or "", run.placement, run.runtime_s,
                                            run.energy_j)
        self._set_run_state(s, run, a.state, a.message)

    def _finish_workflow(self, s: Session, wf: WorkflowRow | ColumnRow, state: WorkflowState,
                         reason: str) -> None:
        wf.state, wf.reason = state, reason
        wf.finished_at = wf.updated_at = _ts(self.clock())
        add_event(s, f"Workflow{state.value}", reason or state.value, workflow_id=wf.id)
        log.info("workflow %s (%s): %s %s", wf.id, wf.name, state.value, reason)
        self._docs.forget(wf.id)

    # ------------------------------------------------------------ adapter calls

    def _cancel_on_backend(self, run_id: str) -> str | None:
        """Tell the backend to stop the run; returns an error message or None."""
        with self.store.session() as s:
            run = s.get(RunRow, run_id)
            site, handle = (run.site, run.handle) if run is not None else (None, None)
        if not handle:
            return None
        adapter = self.federation.get_adapter(site or "")
        if adapter is None:
            return None
        self.store.check_fence()  # a fenced (old) leader cancels nothing
        try:
            adapter.cancel(Handle.from_json(handle))
        except AdapterError as e:
            return str(e)
        return None

    def _stop_workflow(self, a: d.StopWorkflow) -> None:
        ok = True
        for run_id in a.run_ids:
            err = self._cancel_on_backend(run_id)
            with self.store.session() as s:
                run = s.get(RunRow, run_id)
                if run is None or not run.state.active:
                    continue
                if err:
                    ok = False
                    log.warning("run %s: cancel failed, will retry: %s", run.id, err)
                    continue
                run.reason, run.finished_at = a.reason, _ts(self.clock())
                self._set_run_state(s, run, RunState.Cancelled, a.reason)
        if not ok:
            return
        with self.store.session() as s:
            for t in s.scalars(select(TaskRow).where(TaskRow.workflow_id == a.workflow_id)):
                if t.state not in (TaskState.Succeeded, TaskState.Failed):
                    t.state, t.reason = a.task_state, a.reason
            wf = s.get(WorkflowRow, a.workflow_id)
            if wf is not None and not wf.state.terminal:
                self._finish_workflow(s, wf, a.finish, a.finish_reason)

    def _migrate(self, a: d.MigrateRun) -> None:
        err = self._cancel_on_backend(a.run_id)
        with self.store.session() as s:
            run = s.get(RunRow, a.run_id)
            if run is None or not run.state.active:
                return
            if err:
                log.warning("run %s: not migrated yet (%s): cancel on the backend failed, "
                            "will retry: %s", run.id, a.message, err)
                return
            run.reason, run.finished_at = a.message, _ts(self.clock())
            self._set_run_state(s, run, RunState.Migrated, f"{a.label}: {a.message}")
            self.metrics.migrations.labels(a.label).inc()
            others = s.scalars(select(RunRow.id).where(
                RunRow.task_id == run.task_id, RunRow.id != run.id,
                RunRow.state.in_(ACTIVE_RUN_STATES))).first()
            task = s.get(TaskRow, run.task_id)
            if task is not None and task.state == TaskState.Running and others is None:
                task.state, task.not_before = TaskState.Ready, None
                task.attempts = max(0, task.attempts - 1)  # a migration is not a failed attempt
                task.reason = f"migrating: {a.message}"
            self.moves += 1

    def _release(self, run_ids: Sequence[str]) -> None:
        """Release finished runs on their backends, then mark them released in one
        transaction (a release the backend refuses is tried again next cycle)."""
        with self.store.session() as s:  # the three columns it needs, not whole rows
            todo = [(r.id, r.site, r.handle) for chunk in chunks(run_ids)
                    for r in s.execute(select(RunRow.id, RunRow.site, RunRow.handle, RunRow.state)
                                       .where(RunRow.id.in_(chunk),
                                              RunRow.released.is_(False)))
                    if r.state.terminal]
        if not todo:
            return
        if any(handle for _, _, handle in todo):
            self.store.check_fence()  # once per batch: a fenced (old) leader releases nothing
        done = []
        for run_id, site, handle in todo:
            adapter = self.federation.get_adapter(site or "") if handle else None
            if adapter is not None and handle:
                try:
                    adapter.release(Handle.from_json(handle))
                except AdapterError as e:
                    log.debug("run %s: release deferred: %s", run_id, e)
                    continue
            done.append(run_id)
        if done:
            with self.store.session() as s:
                self.store.fence_in(s)  # a bulk update does not flush: fence it here
                s.execute(update(RunRow).where(RunRow.id.in_(done)).values(released=True))

    def remove_site(self, a: d.RemoveSite) -> dict[str, Any]:
        """Drain the site, cancel (or leave) its active runs and wait them out, then forget it.

        1. the site is drained (persisted): nothing new is placed or dispatched there;
        2. with ``cancel_runs``, each active run's backend work is cancelled — also the work
           of a run whose submit answer was lost (no handle yet, found through
           :class:`~adapters.capabilities.FindsWork`);
        3. the cancelled work is waited out (the backend reports it ended), at most
           ``REMOVE_WAIT_S``;
        4. the site is forgotten; its runs fail ("site was removed") at the next cycle and
           their tasks are retried elsewhere.

        Raises:
            NotFound: no such site.
            AdapterError: the backend refused to cancel a run (the site is left draining,
                not removed).
        """
        self.federation.drain(a.name)  # NotFound
        adapter = self.federation.get_adapter(a.name)
        with self.store.session() as s:
            active = [(r.id, r.workflow_id, r.handle) for r in s.scalars(
                select(RunRow).where(RunRow.site == a.name,
                                     RunRow.state.in_(ACTIVE_RUN_STATES)))]
        cancelled: list[str] = []
        left: list[str] = []
        handles: list[Handle] = []
        for run_id, _, handle in active:
            h = Handle.from_json(handle) if handle else None
            if h is None and a.cancel_runs and isinstance(adapter, FindsWork):
                try:
                    h = adapter.find(run_id)
                except AdapterError as e:
                    raise AdapterError(f"looking for the work of run {run_id} failed: {e}; "
                                       "the site is left draining", site=a.name) from e
            if h is None:
                continue
            if not a.cancel_runs:
                left.append(run_id)
                continue
            self.store.check_fence()
            try:
                assert adapter is not None
                adapter.cancel(h)
            except AdapterError as e:
                raise AdapterError(f"cancelling run {run_id} failed: {e}; the site is left "
                                   "draining", site=a.name) from e
            cancelled.append(run_id)
            handles.append(h)
        if adapter is not None and handles:
            self._wait_out(a.name, adapter, handles)
        self.federation.remove(a.name)
        with self.store.session() as s:
            for run_id, workflow_id, _ in active:
                what = ("its backend work was cancelled" if run_id in cancelled else
                        "its backend work was left running, untracked" if run_id in left else
                        "it was not dispatched yet")
                add_event(s, "SiteRemoved", f"site {a.name} was removed; {what}",
                          workflow_id=workflow_id, run_id=run_id)
        self.wake()
        return {"site": a.name, "runs": "cancel" if a.cancel_runs else "leave",
                "cancelled": cancelled, "left": left}

    def _wait_out(self, site: str, adapter: Any, handles: list[Handle]) -> None:
        """Poll ``adapter.status`` until every handle's work ended, or ``REMOVE_WAIT_S``."""
        deadline = time.monotonic() + REMOVE_WAIT_S
        pending = {h.run_id: h for h in handles}
        while pending and time.monotonic() < deadline:
            try:
                st = adapter.status(list(pending.values()))
            except AdapterError as e:
                log.warning("site %s: waiting out cancelled runs: %s", site, e)
                st = {}
            for run_id, status in st.items():
                if status.state.terminal:
                    pending.pop(run_id, None)
            if pending:
                time.sleep(0.2)
        if pending:
            log.warning("site %s: removed while the backend still reports run(s) %s as not "
                        "ended %.0f s after their cancel", site, ", ".join(sorted(pending)),
                        REMOVE_WAIT_S)

    # ------------------------------------------------------------ place

    def _sources(self, s: Session, workflow_id: str, task: Task, doc: WorkflowDocument,
                 run_id: str = "") -> tuple[list[DataSource], list[ArtifactIn]]:
        """The task's data sources (for placement) and, for run ``run_id``, its inputs
        with URLs carrying the run's read capabilities."""
        sources: list[DataSource] = []
        inputs: list[ArtifactIn] = []
        cp = self.settings.control_plane_location
        for ref in task.inputs:
            art = s.get(ArtifactRow, (workflow_id, ref.name))
            if art is None:
                continue
            # placement resolves node ids and site names to locations itself
            sources.append(DataSource(bytes=art.size, locations=[cp],
                                      nodes=[art.node] if art.node else []))
            inputs.append(ArtifactIn(
                name=ref.name, path=ref.path or ref.name,
                url=self.capabilities.url(self.settings.api_url, workflow_id, run_id,
                                          ref.name, Mode.read),
                sha256=art.sha256, size=art.size, simulated=art.simulated))
        datasets = {ds.name: ds for ds in doc.spec.datasets}
        for name in task.datasets:
            ds = datasets[name]
            sources.append(DataSource(bytes=ds.size, locations=list(ds.locations)))
        return sources, inputs

    def _snapshot(self, now: float) -> Snapshot:
        """The placeable nodes (draining sites' too) as a fresh per-batch snapshot: a copy
        of the one kept while ``federation.inventory_generation`` and ``network.version``
        are unchanged (both read before the nodes are listed), else built anew."""
        version = getattr(self.network, "version", None)
        key = None if version is None else (self.federation.inventory_generation, version)
        return self.snapshots.get(key, lambda: self.federation.placeable_nodes(draining=True),
                                  self.network, now)

    def _place_batch(self, task_ids: Sequence[int]) -> int:
        """Place the still-Ready tasks in one batch: Pending → Placed; returns the count."""
        now = self.clock()
        placed = 0
        with self.store.session() as s:
            rows = read_rows(s, TaskRow, task_ids, _TASK_COLUMNS)  # not one query per task
            ready = [t for i in task_ids if (t := rows.get(i)) is not None
                     and t.state == TaskState.Ready]
            if not ready:
                return 0
            requests, by_key = [], {}
            started: set[str] = set()
            new_runs: list[dict[str, Any]] = []
            failed_on = failed_nodes(s, [t.id for t in ready])
            self._docs.load(s, [t.workflow_id for t in ready])  # one query, not one each
            for t in ready:
                doc = self._doc(s, t.workflow_id)
                task = self._docs.task(s, t.workflow_id, t.name)
                sources, _ = self._sources(s, t.workflow_id, task, doc)
                requests.append(PlacementRequest(key=str(t.id), task=task,
                                                 objective=doc.spec.objective, sources=sources,
                                                 avoid=failed_on.get(t.id, frozenset())))
                by_key[str(t.id)] = t
            t0 = time.perf_counter()
            outcomes = plan(requests, self._snapshot(now), self.framework())
            self.metrics.placement_cycle.observe(time.perf_counter() - t0)
            for out in outcomes:
                t = by_key[out.key]
                if out.decision is None:
                    self.metrics.unschedulable.inc()
                    reason = f"unschedulable: {out.reason}"
                    if t.reason != reason:
                        t.reason = reason
                        add_event(s, "TaskUnschedulable", f"task {t.name}: {out.reason}",
                                  workflow_id=t.workflow_id)
                    continue
                dec = out.decision
                t.attempts += 1
                t.state, t.reason, t.not_before = TaskState.Running, "", None
                run = ColumnRow(_new_run(
                    id=new_id("run"), workflow_id=t.workflow_id, task_id=t.id,
                    task_name=t.name, attempt=t.attempts, state=RunState.Pending,
                    site=dec.site, node=dec.node, placement=dec.wire(),
                    created_at=_ts(now), placed_at=_ts(now)))
                add_event(s, "RunPending", f"run {run.id} of task {t.name}, attempt {t.attempts}",
                          workflow_id=t.workflow_id, run_id=run.id)
                self._set_run_state(s, run, RunState.Placed,
                                    f"placed on {dec.node} ({dec.tier.value}): "
                                    + "; ".join(dec.reasons))
                new_runs.append(run.values())
                self.metrics.placements.labels(dec.site, dec.tier.value).inc()
                placed += 1
                started.add(t.workflow_id)
            self.store.write_rows(s, TaskRow, rows.values())
            if new_runs:  # one executemany INSERT, not an ORM object each
                self.store.fence_in(s)
                s.connection().execute(insert(table_of(RunRow)), new_runs)
            # Pending → Running once a first task is placed (columns only: a workflow
            # row's document is not loaded for it)
            for chunk in chunks(sorted(started)):
                first = list(s.scalars(select(WorkflowRow.id).where(
                    WorkflowRow.id.in_(chunk), WorkflowRow.state == WorkflowState.Pending)))
                if first:
                    self.store.fence_in(s)
                    s.execute(update(WorkflowRow).where(WorkflowRow.id.in_(first))
                              .values(state=WorkflowState.Running, updated_at=_ts(now)))
                    for wf_id in first:
                        add_event(s, "WorkflowRunning", "first task placed", workflow_id=wf_id)
        return placed

    def _start_move(self, s: Session, a: d.StartMove, old: ColumnRow | None) -> None:
        """Write a make-before-break move's new run (see :class:`~control_plane.decide.StartMove`);
        ``old``: the run it replaces, as read."""
        if old is None or old.state not in (RunState.Dispatched, RunState.Running):
            return
        now = _ts(self.clock())
        # a move is not an attempt: the new run shares the old one's attempt number, and
        # its failure aborts the move instead of counting against the task's retries
        new = RunRow(id=a.new_run_id, workflow_id=old.workflow_id, task_id=old.task_id,
                     task_name=old.task_name, attempt=old.attempt, state=RunState.Placed,
                     site=a.site, node=a.node, placement=a.placement, created_at=now,
                     placed_at=now, replaces_run_id=old.id)
        s.add(new)
        s.flush()
        old.reason = f"migrating to run {new.id} on {a.node}"
        add_event(s, "RunMigrating", a.message,
                  workflow_id=old.workflow_id, run_id=old.id)
        self.metrics.run_transitions.labels(RunState.Placed.value).inc()
        add_event(s, "RunPlaced", a.placed_message, workflow_id=old.workflow_id, run_id=new.id)
        self.moves += 1

    # ------------------------------------------------------------ dispatch

    def _dispatch(self, run_ids: Sequence[str], decider: Decider | None) -> None:
        """Submit the Placed runs ``run_ids`` (at most :data:`IO_BATCH`): their task runs
        are built in one transaction, each is submitted to its backend, and the handles
        are written in one transaction (Placed → Dispatched). A refused submit goes to
        ``decider`` (:meth:`~control_plane.decide.Decider.submit_failed`)."""
        todo: list[tuple[ColumnRow, TaskRun]] = []
        with self.store.session() as s:
            rows = read_rows(s, RunRow, run_ids, _DISPATCH_COLUMNS)
            self._docs.load(s, [r.workflow_id for r in rows.values()
                                if r.state == RunState.Placed])
            for run_id in run_ids:
                run = rows.get(run_id)
                if run is None or run.state != RunState.Placed:
                    continue
                todo.append((run, self._task_run(s, run)))
        if not todo:
            return
        # a fenced (old) leader submits nothing; one whose lease is taken over after this
        # check submits at most duplicates of the same request ids (= run ids), which the
        # adapters answer with the same work: submission is idempotent
        self.store.check_fence()
        handles: dict[str, Handle] = {}
        failed: list[tuple[str, str, bool]] = []
        for run, tr in todo:
            run_id, site, node_id = run.id, run.site, run.node
            adapter = self.federation.get_adapter(site or "")
            node: Node | None = self.federation.node(node_id or "")
            if adapter is None or node is None:
                failed.append((run_id, f"node {node_id} is no longer in the inventory", False))
                continue
            try:
                handles[run_id] = adapter.submit(tr, node, request_id=run_id)
            except TransientError as e:
                failed.append((run_id, str(e), True))
            except AdapterError as e:
                failed.append((run_id, str(e), False))
            except Exception as e:  # an adapter bug fails the run, not the loop
                log.exception("site %s: submit of %s failed", site, run_id)
                failed.append((run_id, f"submit failed: {e!r}", False))
        if handles:
            # the rows as read above (their JSON columns are not read again), but only
            # those still Placed: the run may have moved on while its backend answered
            # (a slow backend: a cancel, or the next term's loop — whose writes this
            # thread's fence then refuses, Leadership.bind)
            with self.store.session() as s:
                at = _ts(self.clock())
                still = set(s.scalars(select(RunRow.id).where(
                    RunRow.id.in_(list(handles)), RunRow.state == RunState.Placed)))
                done = [run for run, _ in todo if run.id in still]
                for run in done:
                    run.handle, run.dispatched_at = handles[run.id].to_json(), at
                    self._set_run_state(s, run, RunState.Dispatched, f"submitted to {run.site}")
                self.store.write_rows(s, RunRow, done)
        if decider is not None:
            for run_id, error, transient in failed:
                self.apply(decider.submit_failed(run_id, error, transient), decider)

    def _task_run(self, s: Session, run: ColumnRow) -> TaskRun:
        """What the backend is handed for ``run``: its task, inputs and outputs with the
        run's artifact capabilities, and its tenant."""
        doc = self._doc(s, run.workflow_id)
        task = self._docs.task(s, run.workflow_id, run.task_name)
        _, inputs = self._sources(s, run.workflow_id, task, doc, run.id)
        outputs = [ArtifactOut(name=o.name, path=o.path, size_hint=o.size,
                               url=self.capabilities.url(self.settings.api_url,
                                                         run.workflow_id, run.id, o.name,
                                                         Mode.write))
                   for o in task.outputs]
        dataset_bytes = sum(ds.size for ds in doc.spec.datasets if ds.name in task.datasets)
        return TaskRun(run_id=run.id, workflow_id=run.workflow_id,
                       workflow_name=doc.metadata.name, task=task, attempt=run.attempt,
                       inputs=inputs, outputs=outputs, dataset_bytes=dataset_bytes,
                       tenant=self._docs.tenant(s, run.workflow_id))


__all__ = ["Applier"]


_RUN_COLUMNS = ("workflow_id", "task_id", "task_name", "attempt", "state", "reason", "site",
                "node", "started_at", "output_tail", "simulated", "energy_j", "runtime_s")
"""The run columns ``apply`` reads (a run's JSON columns are not: decoding them was a fifth
of a busy reconciler's time; a succeeded run's ``placement`` is read on its own)."""
_TASK_COLUMNS = ("workflow_id", "name", "state", "reason", "attempts")
"""The task columns ``apply`` reads (a task's spec comes from the document cache)."""
_WORKFLOW_COLUMNS = ("name", "state")
"""The workflow columns ``apply`` reads (not its document)."""
_DISPATCH_COLUMNS = ("workflow_id", "task_name", "attempt", "state", "site", "node")
"""The run columns dispatch reads."""


class _Rows:
    """One write transaction's rows by key, as read (:func:`read_rows`)."""

    __slots__ = ("runs", "tasks", "workflows")

    def __init__(self, runs: dict[str, ColumnRow], tasks: dict[int, ColumnRow],
                 workflows: dict[str, ColumnRow]) -> None:
        self.runs, self.tasks, self.workflows = runs, tasks, workflows


def read_predictions(s: Session, run_ids: Sequence[str]) -> dict[str, Any]:
    """Run id → the ``predicted`` member of its stored placement (None without one), one
    query per 500 ids; the database extracts it, so the placement's explanation (most of
    its bytes) is not decoded."""
    out: dict[str, Any] = {}
    for chunk in chunks(list(dict.fromkeys(run_ids))):
        out.update((rid, predicted) for rid, predicted in s.execute(
            select(RunRow.id, RunRow.placement["predicted"]).where(RunRow.id.in_(chunk))))
    return out


def _new_run(**values: Any) -> dict[str, Any]:
    """Every column of a new run row (an executemany INSERT needs the same keys in each):
    ``values`` over the defaults."""
    return {"reason": "", "handle": None, "dispatched_at": None, "started_at": None,
            "finished_at": None, "exit_code": None, "output_tail": "", "bytes_in": 0,
            "bytes_out": 0, "energy_j": None, "runtime_s": None, "cpu_time_s": None,
            "max_rss_bytes": None, "accounting": None, "simulated": False,
            "released": False, "replaces_run_id": None, **values}
