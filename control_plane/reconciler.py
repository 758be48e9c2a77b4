"""The reconciler: one level-triggered loop that drives every workflow to its end.

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

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from sqlalchemy import or_, select

from adapters.base import Handle, RunStatus
from continuum.errors import AdapterError
from continuum.model import RunState, WorkflowState
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
)
from monitoring.metrics import ControlPlaneMetrics
from monitoring.topology import TopologyModel
from placement import Framework

log = logging.getLogger(__name__)

Proposer = Callable[[float], list[Action]]
"""Called with ``now`` after the cycle's own actions are applied; returns more actions."""


def failure_backoff_s(failures: int, interval_s: float) -> float:
    """Seconds to wait after ``failures`` (≥ 1) cycles failed in a row: the interval,
    doubled per further failure, at most ``max(interval_s, 5)`` — a database that is down
    is not asked again every interval, and is asked again within 5 s once it is back."""
    return min(interval_s * 2 ** min(failures - 1, 10), max(interval_s, 5.0))


def policy_of(settings: Settings) -> Policy:
    """The decisions' knobs from the settings."""
    return Policy(retry_backoff_s=settings.retry_backoff_s,
                  retry_backoff_max_s=settings.retry_backoff_max_s,
                  dispatch_deadline_s=settings.dispatch_deadline_s)


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
        while not stop.is_set():
            interval = self.settings.reconcile_interval_s
            try:
                self.cycle()
            except Fenced:
                raise  # not the leader any more: the caller stops this loop
            except Exception as e:
                failures += 1
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
        """observe → decide → apply, then the proposers' actions, then the hooks."""
        t0 = time.perf_counter()
        self._serve_requests()
        obs = self.observe()
        decider = Decider(obs, self.policy)
        self.apply(decider.decide(), decider)
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
            if self.applier.moves > moves:
                self.wake()  # re-place the moved work now (a refused cancel waits a cycle)
        for hook in self._hooks:
            try:
                hook(now)
            except Fenced:
                raise
            except Exception:
                log.exception("cycle hook %r failed; the cycle goes on", hook)
        export_gauges(self.store, self.metrics, self.federation, self.network)
        self.metrics.reconcile_cycle.observe(time.perf_counter() - t0)
        self.last_cycle_at = self.clock()
        self.cycles += 1

    def apply(self, actions: Sequence[Action], decider: Decider | None = None) -> None:
        """See :meth:`control_plane.apply.Applier.apply`."""
        self.applier.apply(actions, decider)

    def _place(self, now: float) -> None:
        """Only the placement step (tests: a run placed, then a crash before dispatch)."""
        obs = self.observe(now, statuses=False)
        self.apply([a for a in d.decide(obs, self.policy)
                    if isinstance(a, d.PlaceTasks)])

    # ------------------------------------------------------------ observe

    def observe(self, now: float | None = None, *, statuses: bool = True) -> Observed:
        """One inventory refresh, one status call per site with dispatched runs, and the
        store rows the decisions need (see :class:`~control_plane.decide.Observed`)."""
        now = self.clock() if now is None else now
        self.federation.refresh(now)
        with self.store.session() as s:
            wfs = s.scalars(select(WorkflowRow).where(WorkflowRow.state.in_(
                (WorkflowState.Pending, WorkflowState.Running, WorkflowState.Cancelling)))).all()
            live = [w.id for w in wfs]
            tasks = s.scalars(select(TaskRow).where(TaskRow.workflow_id.in_(live))).all()
            runs = s.scalars(select(RunRow).where(or_(
                RunRow.state.in_(ACTIVE_RUN_STATES), RunRow.released.is_(False)))).all()
            wf_of = {r.id: r.workflow_id for r in runs}
            by_site: dict[str, list[Handle]] = defaultdict(list)
            for r in runs:
                if r.state in (RunState.Dispatched, RunState.Running) and r.handle and r.site:
                    by_site[r.site].append(Handle.from_json(r.handle))
            obs_wfs = tuple(d.WorkflowView(w.id, w.name, w.state) for w in wfs)
            obs_tasks = tuple(d.TaskView(
                t.id, t.workflow_id, t.name, t.state, tuple(t.depends_on), t.attempts,
                int(t.spec.get("retries", 0)), epoch(t.not_before), t.reason,
                tuple(o["name"] for o in t.spec.get("outputs", []))) for t in tasks)
            obs_runs = tuple(d.RunView(
                r.id, r.workflow_id, r.task_id, r.state, r.site, r.node, bool(r.handle),
                epoch(r.placed_at), epoch(r.started_at), r.reason, r.replaces_run_id,
                r.released) for r in runs)
        found: dict[str, RunStatus] = {}
        errors: dict[str, str] = {}
        for site, handles in by_site.items() if statuses else ():
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
        # read after the statuses: an output is uploaded before its run reports success
        done = {wf_of[rid] for rid, st in found.items()
                if st.state == RunState.Succeeded and rid in wf_of}
        artifacts: frozenset[tuple[str, str]] = frozenset()
        if done:
            with self.store.session() as s:
                artifacts = frozenset(
                    (w, n) for w, n in s.execute(select(ArtifactRow.workflow_id, ArtifactRow.name)
                                                 .where(ArtifactRow.workflow_id.in_(done))))
        return Observed(now=now, workflows=obs_wfs, tasks=obs_tasks, runs=obs_runs,
                        statuses=found, status_errors=errors, artifacts=artifacts)

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

__all__ = ["Proposer", "Reconciler", "policy_of"]
