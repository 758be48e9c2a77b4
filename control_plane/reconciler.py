"""The reconciler: one level-triggered loop that drives every workflow to its end.

Each cycle reads the desired state (workflows, tasks) and the observed state (runs,
and what the adapters report) from scratch and acts on the difference, so it is
restart-safe: a new process picks up where a killed one stopped.

One cycle, in order:

1. **inventory** — each site's nodes, at most every ``inventory_interval_s``;
2. **sync** — one ``adapter.status(handles)`` per site with active runs; a run moves
   Dispatched → Running → Succeeded | Failed | Cancelled as its backend reports;
3. **cancel** — workflows in Cancelling: every active run is cancelled on its backend;
4. **advance** — a Waiting task whose dependencies all succeeded becomes Ready; one
   whose dependency failed is Cancelled; a workflow whose tasks all succeeded
   Succeeds, one with a Failed task Fails (its other runs are cancelled);
5. **place** — every Ready task whose backoff has passed is placed in one batch
   (``placement.place``, capacity deducted as it goes): Pending → Placed;
6. **dispatch** — every Placed run goes to ``adapter.submit(..., request_id=run.id)``:
   Placed → Dispatched. Submission is idempotent, so a run placed before a crash is
   simply submitted again; a backend that refuses transiently is retried until
   ``dispatch_deadline_s``, then the run fails;
7. **release** — finished runs are released on their backend (``adapter.release``).

A failed run is retried while the task has attempts left (``retries`` + 1 in all),
after ``retry_backoff_s · 2^(attempt-1)`` seconds capped at ``retry_backoff_max_s``.
Adapter errors are data: logged, recorded on the run, never allowed to stop the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.base import ArtifactIn, ArtifactOut, Handle, RunStatus, TaskRun
from continuum.errors import AdapterError, TransientError
from continuum.model import (
    Node,
    RunState,
    Task,
    TaskState,
    WorkflowDocument,
    WorkflowState,
)
from control_plane.artifacts import LocalArtifactStore
from control_plane.federation import Federation
from control_plane.migration import MOVING_TO
from control_plane.settings import Settings
from control_plane.store import (
    ArtifactRow,
    RunRow,
    Store,
    TaskRow,
    WorkflowRow,
    add_event,
    new_id,
)
from monitoring.metrics import ControlPlaneMetrics
from placement import DataSource, Framework, PlacementRequest, Snapshot, place

log = logging.getLogger(__name__)

ACTIVE = (RunState.Placed.value, RunState.Dispatched.value, RunState.Running.value)
LIVE_WORKFLOWS = (WorkflowState.Pending.value, WorkflowState.Running.value)


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _failed_nodes(s: Session, task_ids: list[int]) -> dict[int, frozenset[str]]:
    """Task id → the node ids where its earlier runs failed (one query); placement then
    prefers another node for the retry."""
    out: dict[int, set[str]] = defaultdict(set)
    for task_id, node in s.execute(
            select(RunRow.task_id, RunRow.node).where(
                RunRow.task_id.in_(task_ids), RunRow.state == RunState.Failed.value,
                RunRow.node.is_not(None))):
        if node:
            out[task_id].add(node)
    return {k: frozenset(v) for k, v in out.items()}


class Reconciler:
    """Drives workflows; call :meth:`cycle` directly (tests) or :meth:`run_forever`."""

    def __init__(self, store: Store, federation: Federation, artifacts: LocalArtifactStore,
                 settings: Settings, metrics: ControlPlaneMetrics, network: object,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.federation = federation
        self.artifacts = artifacts
        self.settings = settings
        self.metrics = metrics
        self.network = network
        self.clock = clock
        self._wake = threading.Event()
        self.last_cycle_at: float | None = None
        self.cycles = 0
        self._docs: dict[str, WorkflowDocument] = {}
        self.framework: Framework | None = None
        """Placement framework (the server sets the learned one); None = the default."""
        self.hooks: list[Callable[[float], None]] = []
        """Called with ``now`` at the end of every cycle (model retraining, migration)."""

    # ------------------------------------------------------------ loop

    def wake(self) -> None:
        """Run the next cycle now instead of after the interval."""
        self._wake.set()

    def run_forever(self, stop: threading.Event) -> None:
        """Cycle until ``stop`` is set; a failing cycle is logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.cycle()
            except Exception:
                log.exception("reconcile cycle failed; retrying next interval")
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()

    def cycle(self) -> None:
        """One pass of every step (see the module docstring)."""
        t0 = time.perf_counter()
        now = self.clock()
        self.federation.refresh(now)
        self._sync(now)
        self._cancel_requested(now)
        self._advance(now)
        self._place(now)
        self._dispatch(now)
        self._release()
        for hook in self.hooks:
            try:
                hook(now)
            except Exception:
                log.exception("cycle hook %r failed; the cycle goes on", hook)
        self._gauges()
        self.metrics.reconcile_cycle.observe(time.perf_counter() - t0)
        self.last_cycle_at = self.clock()
        self.cycles += 1

    # ------------------------------------------------------------ helpers

    def _doc(self, s: Session, workflow_id: str) -> WorkflowDocument:
        doc = self._docs.get(workflow_id)
        if doc is None:
            row = s.get(WorkflowRow, workflow_id)
            assert row is not None
            doc = self._docs[workflow_id] = WorkflowDocument.model_validate(row.document)
        return doc

    def _set_run_state(self, s: Session, run: RunRow, state: RunState, message: str) -> None:
        if run.state == state.value:
            return
        run.state = state.value
        self.metrics.run_transitions.labels(state.value).inc()
        add_event(s, f"Run{state.value}", message, workflow_id=run.workflow_id, run_id=run.id)
        log.info("run %s (%s/%s): %s — %s", run.id, run.workflow_id, run.task_name,
                 state.value, message)

    def _finish_workflow(self, s: Session, wf: WorkflowRow, state: WorkflowState,
                         reason: str) -> None:
        wf.state, wf.reason = state.value, reason
        wf.finished_at = wf.updated_at = _ts(self.clock())
        add_event(s, f"Workflow{state.value}", reason or state.value, workflow_id=wf.id)
        log.info("workflow %s (%s): %s %s", wf.id, wf.name, state.value, reason)
        self._docs.pop(wf.id, None)

    def _run_failed(self, s: Session, run: RunRow, now: float) -> None:
        """A run of a live task ended badly: retry after backoff, or fail the task."""
        task = s.get(TaskRow, run.task_id)
        assert task is not None
        if task.state != TaskState.Running.value:
            return
        if s.scalars(select(RunRow.id).where(  # issue 6: a failed make-before-break move
                RunRow.task_id == run.task_id, RunRow.id != run.id, RunRow.state.in_(ACTIVE),
                RunRow.reason.startswith(f"{MOVING_TO}{run.id} ", autoescape=True))).first() is not None:
            return  # the old run still serves; the migration controller aborts the move
        spec = Task.model_validate(task.spec)
        if task.attempts <= spec.retries:
            delay = retry_delay(self.settings, task.attempts)
            task.state, task.not_before = TaskState.Ready.value, _ts(now + delay)
            task.reason = f"attempt {task.attempts} failed ({run.reason}); retrying in {delay:.0f}s"
            add_event(s, "TaskRetry", task.reason, workflow_id=run.workflow_id, run_id=run.id)
        else:
            task.state = TaskState.Failed.value
            task.reason = f"failed after {task.attempts} attempt(s); last: {run.reason}"
            if run.exit_code is not None and f"code {run.exit_code}" not in task.reason:
                task.reason += f" (exit code {run.exit_code})"
            add_event(s, "TaskFailed", task.reason, workflow_id=run.workflow_id, run_id=run.id)

    def _cancel_on_backend(self, run: RunRow) -> str | None:
        """Tell the backend to stop the run; returns an error message or None."""
        if not run.handle:
            return None
        adapter = self.federation.get_adapter(run.site or "")
        if adapter is None:
            return None
        try:
            adapter.cancel(Handle.from_json(run.handle))
        except AdapterError as e:
            return str(e)
        return None

    # ------------------------------------------------------------ 2. sync

    def _sync(self, now: float) -> None:
        with self.store.session() as s:
            runs = s.scalars(select(RunRow).where(
                RunRow.state.in_([RunState.Dispatched.value, RunState.Running.value]))).all()
            by_site: dict[str, list[Handle]] = defaultdict(list)
            for r in runs:
                if r.handle and r.site:
                    by_site[r.site].append(Handle.from_json(r.handle))
        for site, handles in by_site.items():
            adapter = self.federation.get_adapter(site)
            if adapter is None:
                statuses = {h.run_id: RunStatus(RunState.Failed, reason=f"site {site!r} was removed")
                            for h in handles}
            else:
                try:
                    statuses = adapter.status(handles)
                except AdapterError as e:
                    log.warning("site %s: status failed: %s", site, e)
                    continue
            if not statuses:
                continue
            with self.store.session() as s:
                for run_id, st in statuses.items():
                    run = s.get(RunRow, run_id)
                    if run is not None and run.state in ACTIVE:
                        self._apply(s, run, st, now)

    def _apply(self, s: Session, run: RunRow, st: RunStatus, now: float) -> None:
        if st.started_at and run.started_at is None:
            run.started_at = st.started_at
        run.output_tail = st.output_tail or run.output_tail
        run.simulated = run.simulated or st.simulated
        if st.state == RunState.Running and run.state != RunState.Running.value:
            run.started_at = run.started_at or _ts(now)
            self._set_run_state(s, run, RunState.Running, f"running on {run.node}")
            return
        if not st.state.terminal:
            return
        run.finished_at = st.finished_at or _ts(now)
        run.exit_code, run.bytes_in, run.bytes_out = st.exit_code, st.bytes_in, st.bytes_out
        run.energy_j = st.energy_j
        run.runtime_s = st.runtime_s
        if run.runtime_s is None and run.started_at is not None:
            run.runtime_s = max(0.0, (run.finished_at - run.started_at).total_seconds())
        self.metrics.bytes_moved.labels("in").inc(st.bytes_in)
        self.metrics.bytes_moved.labels("out").inc(st.bytes_out)
        task = s.get(TaskRow, run.task_id)
        assert task is not None
        state, reason = st.state, st.reason
        if state == RunState.Succeeded:
            missing = [o["name"] for o in task.spec.get("outputs", [])
                       if s.get(ArtifactRow, (run.workflow_id, o["name"])) is None]
            if missing:
                state, reason = RunState.Failed, f"output(s) {', '.join(missing)} were not kept"
            else:
                for rec in st.outputs:
                    art = s.get(ArtifactRow, (run.workflow_id, rec.name))
                    if art is not None and art.run_id is None:
                        art.run_id, art.node = run.id, run.node
        run.reason = reason
        if state == RunState.Succeeded:
            self.metrics.observe_prediction(run.site or "", run.placement, run.runtime_s,
                                            run.energy_j)
            self._set_run_state(s, run, state, f"succeeded on {run.node}"
                                + (f" in {run.runtime_s:.1f}s" if run.runtime_s is not None
                                   else ""))
            if task.state == TaskState.Running.value:
                task.state, task.reason = TaskState.Succeeded.value, ""
        else:
            detail = reason or state.value
            if st.exit_code is not None and f"code {st.exit_code}" not in detail:
                detail += f" (exit code {st.exit_code})"  # unless the backend's reason says it
            self._set_run_state(s, run, state, f"{state.value.lower()} on {run.node}: {detail}")
            self._run_failed(s, run, now)

    # ------------------------------------------------------------ 3. cancel

    def _cancel_requested(self, now: float) -> None:
        with self.store.session() as s:
            wfs = s.scalars(select(WorkflowRow).where(
                WorkflowRow.state == WorkflowState.Cancelling.value)).all()
            for wf in wfs:
                if self._stop_workflow(s, wf.id, "cancelled on request", TaskState.Cancelled):
                    self._finish_workflow(s, wf, WorkflowState.Cancelled, "cancelled on request")

    def _stop_workflow(self, s: Session, workflow_id: str, reason: str,
                       task_state: TaskState) -> bool:
        """Cancel every active run and end every unfinished task; False if a backend refused."""
        ok = True
        for run in s.scalars(select(RunRow).where(RunRow.workflow_id == workflow_id,
                                                  RunRow.state.in_(ACTIVE))).all():
            err = self._cancel_on_backend(run)
            if err:
                ok = False
                log.warning("run %s: cancel failed, will retry: %s", run.id, err)
                continue
            run.reason = reason
            run.finished_at = _ts(self.clock())
            self._set_run_state(s, run, RunState.Cancelled, reason)
        if ok:
            for t in s.scalars(select(TaskRow).where(TaskRow.workflow_id == workflow_id)).all():
                if t.state not in (TaskState.Succeeded.value, TaskState.Failed.value):
                    t.state, t.reason = task_state.value, reason
        return ok

    # ------------------------------------------------------------ 4. advance

    def _advance(self, now: float) -> None:
        with self.store.session() as s:
            wfs = s.scalars(select(WorkflowRow).where(WorkflowRow.state.in_(LIVE_WORKFLOWS))).all()
            for wf in wfs:
                tasks = s.scalars(select(TaskRow).where(TaskRow.workflow_id == wf.id)).all()
                by_name = {t.name: t for t in tasks}
                changed = True
                while changed:  # propagate through chains in one cycle
                    changed = False
                    for t in tasks:
                        if t.state != TaskState.Waiting.value:
                            continue
                        deps = [by_name[d] for d in t.depends_on]
                        bad = [d for d in deps if d.state in (TaskState.Failed.value,
                                                              TaskState.Cancelled.value)]
                        if bad:
                            t.state = TaskState.Cancelled.value
                            t.reason = f"dependency {bad[0].name!r} {bad[0].state.lower()}"
                            changed = True
                        elif all(d.state == TaskState.Succeeded.value for d in deps):
                            t.state, t.reason = TaskState.Ready.value, ""
                            add_event(s, "TaskReady", f"task {t.name} is ready", workflow_id=wf.id)
                            changed = True
                failed = [t for t in tasks if t.state == TaskState.Failed.value]
                if failed:
                    reason = f"task {failed[0].name!r} {failed[0].reason}"
                    if self._stop_workflow(s, wf.id, f"workflow failed: {reason}",
                                           TaskState.Cancelled):
                        self._finish_workflow(s, wf, WorkflowState.Failed, reason)
                elif all(t.state == TaskState.Succeeded.value for t in tasks):
                    self._finish_workflow(s, wf, WorkflowState.Succeeded, "")

    # ------------------------------------------------------------ 5. place

    def _sources(self, s: Session, workflow_id: str, task: Task,
                 doc: WorkflowDocument) -> tuple[list[DataSource], list[ArtifactIn]]:
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
                url=f"{self.settings.api_url}/v1/artifacts/{workflow_id}/{ref.name}",
                sha256=art.sha256, size=art.size, simulated=art.simulated))
        datasets = {d.name: d for d in doc.spec.datasets}
        for name in task.datasets:
            ds = datasets[name]
            sources.append(DataSource(bytes=ds.size, locations=list(ds.locations)))
        return sources, inputs

    def _place(self, now: float) -> None:
        with self.store.session() as s:
            ready = s.scalars(
                select(TaskRow).join(WorkflowRow, WorkflowRow.id == TaskRow.workflow_id)
                .where(TaskRow.state == TaskState.Ready.value,
                       WorkflowRow.state.in_(LIVE_WORKFLOWS))).all()
            ready = [t for t in ready if t.not_before is None or t.not_before <= _ts(now)]
            if not ready:
                return
            requests, by_key = [], {}
            failed_on = _failed_nodes(s, [t.id for t in ready])
            for t in ready:
                doc = self._doc(s, t.workflow_id)
                task = Task.model_validate(t.spec)
                sources, _ = self._sources(s, t.workflow_id, task, doc)
                requests.append(PlacementRequest(key=str(t.id), task=task,
                                                 objective=doc.spec.objective, sources=sources,
                                                 avoid=failed_on.get(t.id, frozenset())))
                by_key[str(t.id)] = t
            t0 = time.perf_counter()
            outcomes = place(requests, Snapshot(nodes=self.federation.placeable_nodes(draining=True),
                                                network=self.network, now=now),  # type: ignore[arg-type]
                             self.framework)
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
                d = out.decision
                t.attempts += 1
                t.state, t.reason, t.not_before = TaskState.Running.value, "", None
                run = RunRow(id=new_id("run"), workflow_id=t.workflow_id, task_id=t.id,
                             task_name=t.name, attempt=t.attempts, state=RunState.Pending.value,
                             site=d.site, node=d.node, placement=d.wire(), created_at=_ts(now),
                             placed_at=_ts(now))
                s.add(run)
                s.flush()
                add_event(s, "RunPending", f"run {run.id} of task {t.name}, attempt {t.attempts}",
                          workflow_id=t.workflow_id, run_id=run.id)
                self._set_run_state(s, run, RunState.Placed,
                                    f"placed on {d.node} ({d.tier.value}): " + "; ".join(d.reasons))
                self.metrics.placements.labels(d.site, d.tier.value).inc()
                wf = s.get(WorkflowRow, t.workflow_id)
                if wf is not None and wf.state == WorkflowState.Pending.value:
                    wf.state, wf.updated_at = WorkflowState.Running.value, _ts(now)
                    add_event(s, "WorkflowRunning", "first task placed", workflow_id=wf.id)

    # ------------------------------------------------------------ 6. dispatch

    def _dispatch(self, now: float) -> None:
        with self.store.session() as s:
            placed = s.scalars(select(RunRow).where(RunRow.state == RunState.Placed.value)).all()
            work = []
            for run in placed:
                doc = self._doc(s, run.workflow_id)
                task_row = s.get(TaskRow, run.task_id)
                assert task_row is not None
                task = Task.model_validate(task_row.spec)
                _, inputs = self._sources(s, run.workflow_id, task, doc)
                outputs = [ArtifactOut(name=o.name, path=o.path, size_hint=o.size,
                                       url=f"{self.settings.api_url}/v1/artifacts/"
                                           f"{run.workflow_id}/{o.name}?run={run.id}")
                           for o in task.outputs]
                dataset_bytes = sum(d.size for d in doc.spec.datasets if d.name in task.datasets)
                tr = TaskRun(run_id=run.id, workflow_id=run.workflow_id,
                             workflow_name=doc.metadata.name, task=task, attempt=run.attempt,
                             inputs=inputs, outputs=outputs, dataset_bytes=dataset_bytes)
                work.append((run.id, run.site, run.node, run.placed_at, tr))
        for run_id, site, node_id, placed_at, tr in work:
            adapter = self.federation.get_adapter(site or "")
            node: Node | None = self.federation.node(node_id or "")
            error, handle, transient = "", None, False
            if adapter is None or node is None:
                error = f"node {node_id} is no longer in the inventory"
            else:
                try:
                    handle = adapter.submit(tr, node, request_id=run_id)
                except TransientError as e:
                    error, transient = str(e), True
                except AdapterError as e:
                    error = str(e)
                except Exception as e:  # an adapter bug fails the run, not the loop
                    log.exception("site %s: submit of %s failed", site, run_id)
                    error = f"submit failed: {e!r}"
            with self.store.session() as s:
                row = s.get(RunRow, run_id)
                if row is None or row.state != RunState.Placed.value:
                    continue
                run = row
                if handle is not None:
                    run.handle, run.dispatched_at = handle.to_json(), _ts(self.clock())
                    self._set_run_state(s, run, RunState.Dispatched, f"submitted to {site}")
                    continue
                waited = now - (placed_at.timestamp() if placed_at else now)
                if transient and waited < self.settings.dispatch_deadline_s:
                    if run.reason != error:
                        run.reason = error
                        add_event(s, "DispatchRetry", error, workflow_id=run.workflow_id,
                                  run_id=run.id)
                    continue
                run.reason, run.finished_at = f"could not dispatch: {error}", _ts(now)
                self._set_run_state(s, run, RunState.Failed, run.reason)
                self._run_failed(s, run, now)

    # ------------------------------------------------------------ 7. release

    def _release(self) -> None:
        with self.store.session() as s:
            done = s.scalars(select(RunRow).where(
                RunRow.released.is_(False),
                RunRow.state.in_([st.value for st in RunState if st.terminal]))).all()
            todo = [(r.id, r.site, r.handle) for r in done]
        for run_id, site, handle in todo:
            adapter = self.federation.get_adapter(site or "") if handle else None
            if adapter is not None:
                try:
                    adapter.release(Handle.from_json(handle))  # type: ignore[arg-type]
                except AdapterError as e:
                    log.debug("run %s: release deferred: %s", run_id, e)
                    continue
            with self.store.session() as s:
                run = s.get(RunRow, run_id)
                if run is not None:
                    run.released = True

    def _gauges(self) -> None:
        with self.store.session() as s:
            for rstate in RunState:
                self.metrics.runs.labels(rstate.value).set(0)
            for name, n in s.execute(select(RunRow.state, func.count()).group_by(RunRow.state)):
                self.metrics.runs.labels(name).set(n)
            for wstate in WorkflowState:
                self.metrics.workflows.labels(wstate.value).set(0)
            for name, n in s.execute(select(WorkflowRow.state, func.count())
                                     .group_by(WorkflowRow.state)):
                self.metrics.workflows.labels(name).set(n)
            self._queue_gauges(s)
        self.metrics.reconcile_lag.set(0)

    def _queue_gauges(self, s: Session) -> None:
        """Queue depths and the SLO ratio of running tasks (monitoring, issue 5)."""
        m = self.metrics
        m.queue_depth.labels("ready").set(s.scalar(select(func.count()).select_from(TaskRow)
                                                   .where(TaskRow.state == TaskState.Ready.value))
                                          or 0)
        m.queue_depth.labels("placed").set(s.scalar(select(func.count()).select_from(RunRow)
                                                    .where(RunRow.state == RunState.Placed.value))
                                           or 0)
        m.site_queue_depth.clear()
        for rt in self.federation.sites():
            m.site_queue_depth.labels(rt.spec.name).set(0)
        for site, n in s.execute(select(RunRow.site, func.count())
                                 .where(RunRow.state == RunState.Dispatched.value)
                                 .group_by(RunRow.site)):
            m.site_queue_depth.labels(site or "").set(n)
        m.slo_latency_ratio.clear()
        rows = s.execute(select(RunRow.workflow_id, RunRow.task_name, RunRow.node, TaskRow.spec)
                         .join(TaskRow, TaskRow.id == RunRow.task_id)
                         .where(RunRow.state == RunState.Running.value)).all()
        for wf_id, task_name, node_id, spec in rows:
            slo = (spec or {}).get("slo")
            node = self.federation.node(node_id or "")
            if not slo or node is None:
                continue
            target = self.federation.node(slo["target"])
            where = target.location if target is not None else slo["target"]
            rtt = self.network.rtt_ms(node.location, where)  # type: ignore[attr-defined]
            m.slo_latency_ratio.labels(wf_id, task_name, slo["target"]).set(
                rtt / float(slo["latencyMs"]))


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: base · 2^(attempt-1), capped."""
    return min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** (attempt - 1))
