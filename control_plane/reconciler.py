"""The reconciler: one loop that drives every workflow to its end — level-triggered at
start, edge-driven in steady state.

A leader's first cycle, one every ``full_resync_s`` (the safety net), and the one after a
failed cycle or a site removal read every live workflow (*full*); every other cycle reads
and decides only the workflows something happened to (see :meth:`Reconciler.observe`),
so its cost follows the change, not the live work. The decisions are per workflow (rule
5's placement batch takes whatever Ready tasks the cycle read), so a cycle over a subset
decides for that subset exactly what a full one would.

Each cycle is **observe → decide → apply**:

1. :meth:`Reconciler.observe` — one inventory refresh (each site at most every
   ``inventory_interval_s``), one ``adapter.status(handles)`` per site with dispatched
   runs (an adapter error is kept as data in ``Observed.status_errors``, never
   raised), and the store state the decisions need, as a plain
   :class:`~control_plane.decide.Observed`;
2. :func:`control_plane.decide.decide` — pure: the observation in, a list of actions
   out (the rules are in that module's docstring);
3. :meth:`Reconciler.apply` (:mod:`control_plane.apply`) — the only code that calls
   adapters (``submit``, ``cancel``, ``release``) or writes run and task rows. It
   re-checks each row's state before it writes (an action about a run that moved on
   meanwhile is dropped).

Placement is a step of ``apply`` (:class:`~control_plane.decide.PlaceTasks`), not a
decision (the reasons are in :mod:`control_plane.apply`). A cycle that placed
something wakes the next one at once, which dispatches the new runs. A failed submit
is an outcome of ``apply`` handed back to the decisions
(:meth:`~control_plane.decide.Decider.submit_failed`).

Other producers never write run state: after the cycle's own actions are applied,
each *proposer* given at construction (the migration controller) is asked for actions
with ``now``, and those are applied the same way; an HTTP handler hands an action to
:meth:`Reconciler.request` (site removal) and waits for its result, which the next
cycle's ``apply`` produces. Submission is idempotent (``request_id`` = run id), so a run
placed before a crash is simply submitted again.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from adapters.base import Handle, RunStatus
from continuum.errors import AdapterError
from continuum.model import RunState, TaskState, WorkflowState
from control_plane import decide as d
from control_plane.apply import Applier
from control_plane.decide import Action, Decider, Observed, Policy, epoch
from control_plane.federation import Federation
from control_plane.leader import Fenced
from control_plane.reconciler_metrics import export_gauges
from control_plane.settings import Settings
from control_plane.store import (
    ACTIVE_RUN_STATES,
    ArtifactRow,
    RunRow,
    Store,
    TaskRow,
    WorkflowRow,
    chunks,
)
from monitoring.metrics import ControlPlaneMetrics
from monitoring.topology import TopologyModel
from placement import Framework

log = logging.getLogger(__name__)

Proposer = Callable[[float], list[Action]]
"""Called with ``now`` after the cycle's own actions are applied; returns more actions."""


@dataclass(frozen=True)
class _Tracked:
    """A dispatched or running run whose backend status each cycle polls."""

    run_id: str
    site: str
    handle: Handle
    workflow_id: str


_LIVE = (WorkflowState.Pending, WorkflowState.Running, WorkflowState.Cancelling)
"""The states of a workflow that is not finished."""


def _news(st: RunStatus) -> tuple[object, ...]:
    """What of a backend status is news to the decisions: its state, start time, reason
    and whether it is simulated. A running run's growing energy and output tail are not
    (they are recorded at its next change and at each full resync; the run's logs route
    reads the live tail from the backend), so a steady running run costs no cycle."""
    return st.state, st.started_at, st.reason, st.simulated


def failure_backoff_s(failures: int, interval_s: float) -> float:
    """Seconds to wait after ``failures`` (≥ 1) cycles failed in a row: the interval,
    doubled per further failure, at most ``max(interval_s, 5)`` — a database that is down
    is not asked again every interval, and is asked again within 5 s once it is back."""
    return min(interval_s * 2 ** min(failures - 1, 10), max(interval_s, 5.0))


def policy_of(settings: Settings) -> Policy:
    """The decisions' knobs from the settings."""
    return Policy(retry_backoff_s=settings.retry_backoff_s,
                  retry_backoff_max_s=settings.retry_backoff_max_s,
                  dispatch_deadline_s=settings.dispatch_deadline_s,
                  max_placements=settings.cycle_max_placements)


class Reconciler:
    """Drives workflows; call :meth:`cycle` directly (tests) or :meth:`run_forever`.

    ``framework``: returns the placement framework to use for the next batch (the
    served learned one); ``hooks``: called with ``now`` at the end of every cycle (model
    retraining); ``proposers``: see the module docstring; ``wake_event``: set by
    anyone (adapters, the API) to run the next cycle now.
    """

    def __init__(self, store: Store, federation: Federation, settings: Settings,
                 metrics: ControlPlaneMetrics, network: TopologyModel,
                 clock: Callable[[], float] = time.time, *,
                 framework: Callable[[], Framework | None] = lambda: None,
                 hooks: Sequence[Callable[[float], None]] = (),
                 proposers: Sequence[Proposer] = (),
                 wake_event: threading.Event | None = None):
        self.store = store
        self.federation = federation
        self.settings = settings
        self.policy = policy_of(settings)
        self.metrics = metrics
        self.network = network
        self.clock = clock
        self._framework = framework
        self._hooks = tuple(hooks)
        self._proposers = tuple(proposers)
        self._wake = wake_event if wake_event is not None else threading.Event()
        self._requests: list[tuple[Action, Future[Any]]] = []
        self._requests_lock = threading.Lock()
        self.last_cycle_at: float | None = None
        self.cycles = 0
        self.observed_workflows = 0
        """How many workflows the last cycle read and decided."""
        self.backlogged = False
        """Whether the last cycle left changed workflows for the next (its cap)."""
        self._next_full = 0.0
        """When the next full resync is due (epoch s); 0: at the next cycle."""
        self._dirty: set[str] = set()
        """Workflows the previous cycle acted on: read again next cycle."""
        self._timers: list[tuple[float, str]] = []
        """Heap of (epoch s, workflow id): a retry backoff that ends then."""
        self._tracked: dict[str, _Tracked] = {}
        """Run id → the dispatched or running run whose status is polled."""
        self._tracked_by_wf: dict[str, set[str]] = {}
        self._seen: dict[str, tuple[object, ...]] = {}
        """Run id → :func:`_news` of the backend status last handed to the decisions."""
        self._next_gauges = 0.0
        self._task_static: dict[int, tuple[int, tuple[str, ...], tuple[str, ...]]] = {}
        """Task id → (retries, depends_on, output names) of a live workflow's task."""
        self._static_by_wf: dict[str, list[int]] = {}
        """Workflow id → the ids of its tasks in ``_task_static``."""
        self.applier = Applier(store, federation, settings, metrics, network, framework,
                               self.wake, clock)

    @property
    def framework(self) -> Framework | None:
        """The placement framework the next batch uses (None = placement's default)."""
        return self._framework()

    # ------------------------------------------------------------ loop

    def wake(self) -> None:
        """Run the next cycle now instead of after the interval."""
        self._wake.set()

    def request(self, action: Action) -> Future[Any]:
        """Hand ``action`` to the next cycle's ``apply`` (and wake it); the future gets its
        result, or the error that stopped it."""
        fut: Future[Any] = Future()
        with self._requests_lock:
            self._requests.append((action, fut))
        self.wake()
        return fut

    def run_forever(self, stop: threading.Event) -> None:
        """Cycle until ``stop`` is set; a failing cycle is logged and the loop goes on.

        Raises:
            Fenced: a write found this replica no longer leads (the loop stops).
        """
        failures = 0
        self.resync()  # level-triggered at start: a new leader reads everything once
        while not stop.is_set():
            interval = self.settings.reconcile_interval_s
            try:
                self.cycle()
            except Fenced:
                raise  # not the leader any more: the caller stops this loop
            except Exception as e:
                failures += 1
                self.resync()  # what the failed cycle consumed is read again in full
                if failures == 1:
                    log.exception("reconcile cycle failed; retrying next interval")
                elif failures & (failures - 1) == 0:  # 2, 4, 8, …: no traceback per cycle
                    log.warning("reconcile cycle failed %d times in a row: %s: %s",
                                failures, type(e).__name__, str(e).splitlines()[0] if str(e)
                                else "")
                interval = failure_backoff_s(failures, interval)
            else:
                if failures:
                    log.info("reconcile cycle succeeded again after %d failed", failures)
                failures = 0
            self._wake.wait(interval)
            self._wake.clear()

    def cycle(self) -> None:
        """observe → decide → apply (and the submits of the runs it placed), then the
        proposers' actions, then the hooks."""
        t0 = time.perf_counter()
        self._serve_requests()
        obs = self.observe()
        decider = Decider(obs, self.policy)
        actions = decider.decide()
        self.apply(actions, decider)
        self._dispatch_placed(actions)
        self._acted_on(actions, decider)
        self._dirty.update(decider.deferred)  # Ready tasks past this cycle's placement cap
        if self.backlogged or decider.deferred:
            self.wake()  # more changed work than one cycle takes: the next one starts now
        now = obs.now
        for propose in self._proposers:
            try:
                actions = propose(now)
            except Fenced:
                raise
            except Exception:
                log.exception("proposer %r failed; the cycle goes on", propose)
                continue
            moves = self.applier.moves
            self.apply(actions)
            self._acted_on(actions, None)
            if self.applier.moves > moves:
                self.wake()  # re-place the moved work now (a refused cancel waits a cycle)
        for hook in self._hooks:
            try:
                hook(now)
            except Fenced:
                raise
            except Exception:
                log.exception("cycle hook %r failed; the cycle goes on", hook)
        if now >= self._next_gauges:  # the counts scan every row: not every cycle
            self._next_gauges = now + self.settings.gauges_interval_s
            export_gauges(self.store, self.metrics, self.federation, self.network)
        self.metrics.reconcile_cycle.observe(time.perf_counter() - t0)
        self.last_cycle_at = self.clock()
        self.cycles += 1

    def apply(self, actions: Sequence[Action], decider: Decider | None = None) -> None:
        """See :meth:`control_plane.apply.Applier.apply`."""
        self.applier.apply(actions, decider)

    def _dispatch_placed(self, actions: Sequence[Action]) -> None:
        """Submit the runs this cycle's placement made in this cycle (they are not in the
        decisions, which were taken before it): waiting for the next cycle's decisions
        cost every wave of tasks one more cycle and one more read of its workflow. The
        next cycle reads those workflows all the same (placement marks them changed) and
        tracks the runs; a refused submit leaves its run Placed, and the next cycle's
        decisions retry or fail it as before."""
        task_ids = [t for a in actions if isinstance(a, d.PlaceTasks) for t in a.task_ids]
        if task_ids:
            self.applier.dispatch_placed(task_ids)

    def _place(self, now: float) -> None:
        """Only the placement step (tests: a run placed, then a crash before dispatch)."""
        obs = self.observe(now, statuses=False)
        self.apply([a for a in d.decide(obs, self.policy)
                    if isinstance(a, d.PlaceTasks)])

    # ------------------------------------------------------------ observe

    def resync(self) -> None:
        """Make the next cycle a full one (every live workflow re-read and decided)."""
        self._next_full = 0.0

    def observe(self, now: float | None = None, *, statuses: bool = True) -> Observed:
        """One inventory refresh, one status call per site with dispatched runs, and the
        store rows the decisions need (see :class:`~control_plane.decide.Observed`).

        A cycle reads only the *changed* workflows: those with a run whose backend
        status is news (:func:`_news`), those the previous cycle acted on or left over,
        those with a timer due (a retry backoff that ends), and those Pending or
        Cancelling in the store (a submission or a cancel on any replica, over the index
        on ``workflows.state``, oldest first) — at most ``cycle_max_workflows``, in that
        order; the rest are left for the next cycle (``backlogged``). A full resync (the
        first cycle, one every ``full_resync_s``, and one after :meth:`resync`) first
        forgets what was known and counts every live workflow, and every one with a run
        not yet released, as changed."""
        now = self.clock() if now is None else now
        self.federation.refresh(now)
        full = now >= self._next_full
        found: dict[str, RunStatus] = {}
        errors: dict[str, str] = {}
        if full:  # forget what was known; every live workflow is a change (read below)
            self._next_full = now + self.settings.full_resync_s
            self._timers.clear()
            self._tracked.clear()
            self._tracked_by_wf.clear()
            self._seen.clear()
            self._task_static.clear()
            self._static_by_wf.clear()
        changed: list[str] = []
        if statuses and self._tracked:  # the backends' news: what changed decides what is read
            found = self._poll(list(self._tracked.values()), errors)
            changed = [self._tracked[rid].workflow_id for rid, st in found.items()
                       if self._seen.get(rid) != _news(st)]
        due = []
        while self._timers and self._timers[0][0] <= now:
            due.append(heapq.heappop(self._timers)[1])
        limit = self.settings.cycle_max_workflows
        with self.store.session() as s:  # one transaction: what changed, then its rows
            if full:
                self._dirty.update(s.scalars(select(WorkflowRow.id).where(
                    WorkflowRow.state.in_(_LIVE))))
                self._dirty.update(s.scalars(select(RunRow.workflow_id).distinct().where(
                    RunRow.released.is_(False))))
            asked = s.scalars(select(WorkflowRow.id).where(WorkflowRow.state.in_(  # oldest first
                (WorkflowState.Pending, WorkflowState.Cancelling)))
                .order_by(WorkflowRow.created_at).limit(limit + 1))  # +1: is there more?
            queue = list(dict.fromkeys([*changed, *self._dirty, *due, *asked]))
            ids, self._dirty = set(queue[:limit]), set(queue[limit:])
            self.backlogged = len(queue) > limit
            wfs, tasks, runs, handles = self._read(s, ids, now)
        if statuses:
            new = [t for r in runs if (t := self._track(r, handles)) is not None
                   and t.run_id not in found]
            found.update(self._poll(new, errors))
        live_runs = {r.id for r in runs}
        found = {rid: st for rid, st in found.items()  # what the decisions have not seen
                 if rid in live_runs and self._seen.get(rid) != _news(st)}
        self._seen.update((rid, _news(st)) for rid, st in found.items())
        wf_of = {r.id: r.workflow_id for r in runs}
        # read after the statuses: an output is uploaded before its run reports success
        done = {wf_of[rid] for rid, st in found.items() if st.state == RunState.Succeeded}
        artifacts: frozenset[tuple[str, str]] = frozenset()
        if done:
            with self.store.session() as s:
                artifacts = frozenset(
                    (w, n) for w, n in s.execute(select(ArtifactRow.workflow_id, ArtifactRow.name)
                                                 .where(ArtifactRow.workflow_id.in_(done))))
        self.observed_workflows = len(wfs)
        return Observed(now=now, workflows=wfs, tasks=tasks, runs=runs,
                        statuses=found, status_errors=errors, artifacts=artifacts)

    def _read(self, s: Session, ids: set[str], now: float) -> tuple[
            tuple[d.WorkflowView, ...], tuple[d.TaskView, ...], tuple[d.RunView, ...],
            dict[str, Handle]]:
        """The live workflows among ``ids`` with their tasks and active or unreleased runs,
        as views, read in session ``s``, and the handles of those runs that are dispatched
        or running; the tracked runs of those workflows are forgotten (:meth:`_track` adds
        the current ones back).

        Only the columns the views need are read (a workflow's document and a task's spec
        are not parsed again: a task's retries, outputs and dependencies never change, so
        they are kept from its first read until its workflow ends)."""
        wf_rows: list[Any] = []
        task_rows: list[Any] = []
        run_rows: list[Any] = []
        db = s.connection()  # plain Core rows: the ORM's result layer is not needed here
        for chunk in chunks(sorted(ids)):
            live = db.execute(select(WorkflowRow.id, WorkflowRow.name, WorkflowRow.state)
                              .where(WorkflowRow.id.in_(chunk),
                                     WorkflowRow.state.in_(_LIVE))).all()
            wf_rows += live
            if live:  # an ended workflow's tasks are not needed (its runs may be)
                task_rows += db.execute(select(
                    TaskRow.id, TaskRow.workflow_id, TaskRow.name, TaskRow.state,
                    TaskRow.attempts, TaskRow.not_before, TaskRow.reason)
                    .where(TaskRow.workflow_id.in_([w.id for w in live])))
            run_rows += db.execute(select(
                RunRow.id, RunRow.workflow_id, RunRow.task_id, RunRow.state, RunRow.site,
                RunRow.node, RunRow.handle, RunRow.placed_at, RunRow.started_at,
                RunRow.reason, RunRow.replaces_run_id, RunRow.released)
                .where(RunRow.workflow_id.in_(chunk),
                       or_(RunRow.state.in_(ACTIVE_RUN_STATES), RunRow.released.is_(False))))
        live_ids = {w.id for w in wf_rows}
        for wf_id in ids - live_ids:  # it ended: forget its tasks' static columns
            for tid in self._static_by_wf.pop(wf_id, ()):
                self._task_static.pop(tid, None)
        unknown = [t.id for t in task_rows if t.id not in self._task_static]
        for chunk_ids in chunks(unknown):
            for tid, wf_id, spec, after in db.execute(select(
                    TaskRow.id, TaskRow.workflow_id, TaskRow.spec, TaskRow.depends_on)
                    .where(TaskRow.id.in_(chunk_ids))):
                self._task_static[tid] = (int(spec.get("retries", 0)), tuple(after),
                                          tuple(o["name"] for o in spec.get("outputs", [])))
                self._static_by_wf.setdefault(wf_id, []).append(tid)
        untracked = [rid for wf_id in ids for rid in self._tracked_by_wf.pop(wf_id, ())]
        wfs = tuple(d.WorkflowView(w.id, w.name, w.state) for w in wf_rows)
        tasks = []
        for t in task_rows:
            retries, after, outputs = self._task_static[t.id]
            tasks.append(d.TaskView(t.id, t.workflow_id, t.name, t.state, after, t.attempts,
                                    retries, epoch(t.not_before), t.reason, outputs))
        runs = tuple(d.RunView(
            r.id, r.workflow_id, r.task_id, r.state, r.site, r.node, bool(r.handle),
            epoch(r.placed_at), epoch(r.started_at), r.reason, r.replaces_run_id,
            r.released) for r in run_rows)
        handles = {r.id: Handle.from_json(r.handle) for r in run_rows
                   if r.state in (RunState.Dispatched, RunState.Running)
                   and r.handle and r.site}
        for rid in untracked:
            self._tracked.pop(rid, None)
            if rid not in handles:  # no longer dispatched or running: forget what it said
                self._seen.pop(rid, None)
        for t in tasks:  # a retry backoff that ends later: read that workflow then
            if t.state == TaskState.Ready and t.not_before is not None and t.not_before > now:
                heapq.heappush(self._timers, (t.not_before, t.workflow_id))
        return wfs, tuple(tasks), runs, handles

    def _track(self, run: d.RunView, handles: dict[str, Handle]) -> _Tracked | None:
        """Start polling ``run``'s backend status if it is dispatched or running (its
        handle in ``handles``)."""
        handle = handles.get(run.id)
        if handle is None or run.site is None:
            return None
        t = _Tracked(run.id, run.site, handle, run.workflow_id)
        self._tracked[run.id] = t
        self._tracked_by_wf.setdefault(run.workflow_id, set()).add(run.id)
        return t

    def _untrack(self, run_id: str) -> None:
        """Stop polling ``run_id``: it ended in the store and was handed to its backend's
        ``release``. A run is released in the cycle it ends, while it is still tracked
        (it was Dispatched or Running when its workflow was read); polling it once more
        asked the backend about work it had just forgotten (the sim twin adopted it back
        and journaled it again). A release the backend refused is produced again when
        its workflow is read (it is marked changed all the same)."""
        t = self._tracked.pop(run_id, None)
        self._seen.pop(run_id, None)
        if t is not None:
            by_wf = self._tracked_by_wf.get(t.workflow_id)
            if by_wf is not None:
                by_wf.discard(run_id)

    def _poll(self, runs: Sequence[_Tracked], errors: dict[str, str]) -> dict[str, RunStatus]:
        """One ``status`` call per site for ``runs`` (a removed site's runs are reported
        Failed; a site whose call fails is recorded in ``errors``)."""
        by_site: dict[str, list[Handle]] = defaultdict(list)
        for t in runs:
            by_site[t.site].append(t.handle)
        found: dict[str, RunStatus] = {}
        for site, handles in by_site.items():
            adapter = self.federation.get_adapter(site)
            if adapter is None:
                found.update({h.run_id: RunStatus(RunState.Failed,
                                                  reason=f"site {site!r} was removed")
                              for h in handles})
                continue
            try:
                found.update(adapter.status(handles))
            except AdapterError as e:
                log.warning("site %s: status failed: %s", site, e)
                errors[site] = str(e)
        return found

    def _acted_on(self, actions: Sequence[Action], decider: Decider | None) -> None:
        """Mark the workflows ``actions`` concern as changed: the next cycle reads them
        again (an action that must be retried — a deferred release, a refused submit, an
        unplaceable task — is produced again there). A site removal makes the next cycle
        a full one."""
        runs: list[str] = []
        tasks: list[int] = []
        for a in actions:
            if isinstance(a, d.RecordStatus):
                continue  # nothing follows from it
            if isinstance(a, d.Release):
                self._untrack(a.run_id)
            if isinstance(a, d.RemoveSite):
                self.resync()
            elif isinstance(a, d.PlaceTasks):
                tasks += a.task_ids
            elif (wf := getattr(a, "workflow_id", None)) is not None:
                self._dirty.add(wf)
            elif (tid := getattr(a, "task_id", None)) is not None:
                tasks.append(tid)
            elif (rid := getattr(a, "run_id", None)) is not None:
                runs.append(rid)
        known_tasks = decider.tasks if decider is not None else {}
        known_runs = decider.runs if decider is not None else {}
        unknown_tasks = [t for t in tasks if t not in known_tasks]
        unknown_runs = [r for r in runs if r not in known_runs and r not in self._tracked]
        self._dirty.update(known_tasks[t].workflow_id for t in tasks if t in known_tasks)
        self._dirty.update(known_runs[r].workflow_id for r in runs if r in known_runs)
        self._dirty.update(self._tracked[r].workflow_id for r in runs
                           if r not in known_runs and r in self._tracked)
        if unknown_tasks or unknown_runs:  # a proposer's or a request's: ask the store
            with self.store.session() as s:
                for chunk in chunks(unknown_tasks):
                    self._dirty.update(s.scalars(select(TaskRow.workflow_id)
                                                 .where(TaskRow.id.in_(chunk))))
                for chunk in chunks(unknown_runs):
                    self._dirty.update(s.scalars(select(RunRow.workflow_id)
                                                 .where(RunRow.id.in_(chunk))))

    def abandon_requests(self, error: Exception) -> None:
        """Fail every request still queued with ``error`` (the loop stopped: this replica
        stepped down), so its caller answers now instead of at its timeout."""
        with self._requests_lock:
            todo, self._requests = self._requests, []
        for _, fut in todo:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(error)

    def _serve_requests(self) -> None:
        with self._requests_lock:
            todo, self._requests = self._requests, []
        for action, fut in todo:
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result: Any = None
                if isinstance(action, d.RemoveSite):
                    result = self.applier.remove_site(action)
                else:
                    self.applier.apply([action])
            except Exception as e:  # the requester decides what the error means
                fut.set_exception(e)
            else:
                fut.set_result(result)
            finally:
                self._acted_on([action], None)

__all__ = ["Proposer", "Reconciler", "policy_of"]
