"""The reconciler's decisions: a pure function from what was observed to what to do.

:func:`decide` takes an :class:`Observed` (plain dataclasses: the live workflows, their
tasks, the active and unreleased runs, what each backend said about them this cycle)
and returns a list of :data:`~control_plane.actions.Action` (plain frozen dataclasses,
defined in :mod:`control_plane.actions` and re-exported here). It does no I/O: no
store, no adapter, no clock (``now`` is in the observation). The
:class:`~control_plane.apply.Applier` is the only code that carries actions out.

The rules, in the order a cycle applies them (each step sees the previous steps'
decisions, so a chain of dependencies advances in one cycle):

1. **status** — a run its backend reports Running becomes Running; one that ended
   becomes Succeeded (if every declared output was kept, else Failed), Failed or
   Cancelled. A failed run of a Running task is retried after
   ``retry_backoff_s · 2^(attempt−1)`` s (capped at ``retry_backoff_max_s``) while the
   task has attempts left (``retries`` + 1 in all), else the task Fails. A failed run
   that *replaces* a still-active run (a make-before-break move) aborts the move and
   costs the task nothing.
2. **moves** — a replacing run now Running ends the move: the replaced run is migrated.
3. **cancel** — a Cancelling workflow: every active run is cancelled, every unfinished
   task Cancelled, the workflow Cancelled (all or nothing, see :class:`StopWorkflow`).
4. **advance** — a Waiting task whose dependencies all succeeded becomes Ready; one
   with a Failed or Cancelled dependency is Cancelled; a workflow with a Failed task
   Fails (its other runs cancelled); one whose tasks all succeeded Succeeds.
5. **place** — every Ready task of a live workflow whose backoff has passed, in one
   batch of at most ``max_placements`` (:class:`PlaceTasks`; placement itself runs in
   ``apply``, see there; the workflows of tasks left out are in ``Decider.deferred``).
6. **dispatch** — every Placed run is submitted (:class:`Dispatch`); a submit that
   fails comes back through :meth:`Decider.submit_failed`: a transient refusal is
   retried until ``dispatch_deadline_s`` after placement, then the run Fails.
7. **release** — every finished run not yet released is released on its backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from adapters.base import RunStatus
from continuum.model import RunState, TaskState, WorkflowState
from control_plane.actions import (
    AbortMove,
    Action,
    CancelTask,
    Dispatch,
    DispatchRetry,
    FailTask,
    FinishWorkflow,
    MarkTaskReady,
    MigrateRun,
    PlaceTasks,
    RecordStatus,
    Release,
    RemoveSite,
    RetryTask,
    SetRunState,
    StartMove,
    StopWorkflow,
    SucceedTask,
)

# ------------------------------------------------------------------ what was observed


@dataclass(frozen=True)
class WorkflowView:
    """A workflow that is not finished (Pending, Running or Cancelling)."""

    id: str
    name: str
    state: WorkflowState


@dataclass(frozen=True)
class TaskView:
    """A task of a live workflow. ``not_before``: epoch s before which it is not placed;
    ``retries``: extra attempts allowed; ``outputs``: names of its declared outputs."""

    id: int
    workflow_id: str
    name: str
    state: TaskState
    depends_on: tuple[str, ...] = ()
    attempts: int = 0
    retries: int = 0
    not_before: float | None = None
    reason: str = ""
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunView:
    """An active run, or a finished one not yet released. Times are epoch seconds.

    ``replaces_run_id``: the run this one replaces in a make-before-break move."""

    id: str
    workflow_id: str
    task_id: int
    state: RunState
    site: str | None = None
    node: str | None = None
    has_handle: bool = False
    placed_at: float | None = None
    started_at: float | None = None
    reason: str = ""
    replaces_run_id: str | None = None
    released: bool = False


@dataclass(frozen=True)
class Observed:
    """One cycle's observation (see ``Reconciler.observe``).

    ``statuses``: run id → what its backend said this cycle, where it is news since the
    reconciler last handed that run's status over (a run of a removed site is reported
    Failed); ``status_errors``: site → why its status call failed (its runs
    are left as they are); ``artifacts``: (workflow id, name) of every kept artifact
    of the workflows with a run reported Succeeded this cycle (read after the statuses)."""

    now: float
    workflows: tuple[WorkflowView, ...] = ()
    tasks: tuple[TaskView, ...] = ()
    runs: tuple[RunView, ...] = ()
    statuses: dict[str, RunStatus] = field(default_factory=dict)
    status_errors: dict[str, str] = field(default_factory=dict)
    artifacts: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Policy:
    """The knobs of the decisions (seconds): see :class:`control_plane.settings.Settings`."""

    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 60.0
    dispatch_deadline_s: float = 60.0
    max_placements: int = 1_000_000
    """Most tasks one cycle places (the rest wait for the next cycle, oldest workflows
    first): bounds a cycle's length when a burst of work arrives."""


def retry_delay(policy: Policy, attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: base · 2^(attempt-1), capped."""
    return min(policy.retry_backoff_max_s, policy.retry_backoff_s * 2 ** (attempt - 1))


# ------------------------------------------------------------------ the decisions


def with_exit_code(text: str, code: int | None) -> str:
    """``text`` with " (exit code N)" added, unless it already says the code."""
    return text if code is None or f"code {code}" in text else f"{text} (exit code {code})"


def epoch(dt: datetime | None) -> float | None:
    """Seconds since the epoch of ``dt`` (None stays None)."""
    return dt.timestamp() if dt is not None else None


class Decider:
    """The working state of one cycle's decisions: the observation with the decisions
    so far applied to a private copy, so later steps see earlier ones. Pure."""

    def __init__(self, observed: Observed, policy: Policy) -> None:
        self.obs = observed
        self.policy = policy
        self.tasks = {t.id: t for t in observed.tasks}
        self.runs = {r.id: r for r in observed.runs}
        self.wstate = {w.id: w.state for w in observed.workflows}
        self.tstate = {t.id: t.state for t in observed.tasks}
        self.not_before = {t.id: t.not_before for t in observed.tasks}
        self.treason = {t.id: t.reason for t in observed.tasks}
        self.rstate = {r.id: r.state for r in observed.runs}
        self.rreason = {r.id: r.reason for r in observed.runs}
        self.replacing = {r.replaces_run_id: r.id for r in observed.runs if r.replaces_run_id}
        """replaced run id → id of the run replacing it."""
        self._tasks_by_wf: dict[str, list[TaskView]] = {}
        for t in observed.tasks:
            self._tasks_by_wf.setdefault(t.workflow_id, []).append(t)
        self.deferred: set[str] = set()
        """Workflows with Ready tasks left out of this cycle's placement batch
        (``Policy.max_placements``)."""
        self._runs_by_wf: dict[str, list[RunView]] = {}
        for r in observed.runs:
            self._runs_by_wf.setdefault(r.workflow_id, []).append(r)

    # ------------------------------------------------------------ helpers

    def _active_runs(self, workflow_id: str) -> tuple[str, ...]:
        return tuple(r.id for r in self._runs_by_wf.get(workflow_id, ())
                     if self.rstate[r.id].active)

    def _tasks_of(self, workflow_id: str) -> list[TaskView]:
        return self._tasks_by_wf.get(workflow_id, [])

    def _stop(self, workflow_id: str, reason: str, finish: WorkflowState,
              finish_reason: str) -> StopWorkflow:
        runs = self._active_runs(workflow_id)
        for rid in runs:
            self.rstate[rid], self.rreason[rid] = RunState.Cancelled, reason
        for t in self._tasks_of(workflow_id):
            if self.tstate[t.id] not in (TaskState.Succeeded, TaskState.Failed):
                self.tstate[t.id] = TaskState.Cancelled
        self.wstate[workflow_id] = finish
        return StopWorkflow(workflow_id, runs, reason, finish, finish_reason)

    def run_failed(self, run: RunView, reason: str, exit_code: int | None) -> list[Action]:
        """A run of a live task ended badly: retry after backoff, fail the task, or — a
        replacing run whose original still serves — abort the move."""
        task = self.tasks.get(run.task_id)
        if task is None or self.tstate[task.id] != TaskState.Running:
            return []
        old = run.replaces_run_id
        if old is not None and old in self.rstate and self.rstate[old].active:
            old_run = self.runs[old]
            return [AbortMove(old, run.id, f"run {run.id} did not start ({reason}); run {old} "
                                           f"keeps serving on {old_run.node}")]
        if task.attempts <= task.retries:
            delay = retry_delay(self.policy, task.attempts)
            self.tstate[task.id] = TaskState.Ready
            self.not_before[task.id] = self.obs.now + delay
            return [RetryTask(task.id, run.id, self.obs.now + delay,
                              f"attempt {task.attempts} failed ({reason}); "
                              f"retrying in {delay:.0f}s")]
        why = with_exit_code(f"failed after {task.attempts} attempt(s); last: {reason}", exit_code)
        self.tstate[task.id], self.treason[task.id] = TaskState.Failed, why
        return [FailTask(task.id, run.id, why)]

    # ------------------------------------------------------------ the steps

    def decide(self) -> list[Action]:
        """Every step in order (see the module docstring)."""
        return [*self.statuses(), *self.moves(), *self.cancels(), *self.advance(),
                *self.place(), *self.dispatch(), *self.release()]

    def statuses(self) -> list[Action]:
        out: list[Action] = []
        now = self.obs.now
        for run_id, st in self.obs.statuses.items():
            run = self.runs.get(run_id)
            if run is None or not self.rstate[run_id].active:
                continue
            if st.state == RunState.Running and self.rstate[run_id] != RunState.Running:
                self.rstate[run_id] = RunState.Running
                out.append(SetRunState(run_id, RunState.Running, f"running on {run.node}",
                                       status=st))
                continue
            if not st.state.terminal:
                if st.started_at or st.output_tail or st.simulated:
                    out.append(RecordStatus(run_id, st))
                continue
            state, reason = st.state, st.reason
            task = self.tasks.get(run.task_id)
            if state == RunState.Succeeded and task is not None:
                missing = [o for o in task.outputs
                           if (run.workflow_id, o) not in self.obs.artifacts]
                if missing:
                    state, reason = RunState.Failed, f"output(s) {', '.join(missing)} were not kept"
            started = epoch(st.started_at) or run.started_at
            finished = epoch(st.finished_at) or now
            runtime = st.runtime_s
            if runtime is None and started is not None:
                runtime = max(0.0, finished - started)
            self.rstate[run_id], self.rreason[run_id] = state, reason
            if state == RunState.Succeeded:
                out.append(SetRunState(run_id, state, f"succeeded on {run.node}" + (
                    f" in {runtime:.1f}s" if runtime is not None else ""), reason=reason,
                    status=st, runtime_s=runtime))
                if task is not None and self.tstate[task.id] == TaskState.Running:
                    self.tstate[task.id] = TaskState.Succeeded
                    out.append(SucceedTask(task.id))
                continue
            detail = with_exit_code(reason or state.value, st.exit_code)
            out.append(SetRunState(run_id, state, f"{state.value.lower()} on {run.node}: {detail}",
                                   reason=reason, status=st, runtime_s=runtime))
            out += self.run_failed(run, reason, st.exit_code)
        return out

    def moves(self) -> list[Action]:
        """A replacing run that runs ends its move: the replaced run is migrated."""
        out: list[Action] = []
        for old_id, new_id in self.replacing.items():
            if old_id is None or old_id not in self.rstate or not self.rstate[old_id].active:
                continue
            if self.rstate.get(new_id) == RunState.Running:
                new = self.runs[new_id]
                self.rstate[old_id] = RunState.Migrated
                out.append(MigrateRun(old_id, "better-node",
                                      f"replaced by run {new_id} now running on {new.node}"))
        return out

    def cancels(self) -> list[Action]:
        return [self._stop(w.id, "cancelled on request", WorkflowState.Cancelled,
                           "cancelled on request")
                for w in self.obs.workflows if self.wstate[w.id] == WorkflowState.Cancelling]

    def advance(self) -> list[Action]:
        out: list[Action] = []
        for w in self.obs.workflows:
            if self.wstate[w.id] not in (WorkflowState.Pending, WorkflowState.Running):
                continue
            tasks = self._tasks_of(w.id)
            by_name = {t.name: t for t in tasks}
            changed = True
            while changed:  # propagate through chains in one cycle
                changed = False
                for t in tasks:
                    if self.tstate[t.id] != TaskState.Waiting:
                        continue
                    deps = [by_name[d] for d in t.depends_on]
                    bad = [d for d in deps
                           if self.tstate[d.id] in (TaskState.Failed, TaskState.Cancelled)]
                    if bad:
                        self.tstate[t.id] = TaskState.Cancelled
                        out.append(CancelTask(t.id, f"dependency {bad[0].name!r} "
                                                    f"{self.tstate[bad[0].id].value.lower()}"))
                        changed = True
                    elif all(self.tstate[d.id] == TaskState.Succeeded for d in deps):
                        self.tstate[t.id] = TaskState.Ready
                        out.append(MarkTaskReady(t.id))
                        changed = True
            failed = [t for t in tasks if self.tstate[t.id] == TaskState.Failed]
            if failed:
                reason = f"task {failed[0].name!r} {self.treason[failed[0].id]}"
                out.append(self._stop(w.id, f"workflow failed: {reason}", WorkflowState.Failed,
                                      reason))
            elif all(self.tstate[t.id] == TaskState.Succeeded for t in tasks):
                self.wstate[w.id] = WorkflowState.Succeeded
                out.append(FinishWorkflow(w.id, WorkflowState.Succeeded))
        return out

    def place(self) -> list[Action]:
        now = self.obs.now
        ready = [t for t in self.obs.tasks
                 if self.tstate[t.id] == TaskState.Ready
                 and self.wstate.get(t.workflow_id) in (WorkflowState.Pending,
                                                         WorkflowState.Running)
                 and ((nb := self.not_before[t.id]) is None or nb <= now)]
        cap = self.policy.max_placements
        self.deferred.update(t.workflow_id for t in ready[cap:])
        return [PlaceTasks(tuple(t.id for t in ready[:cap]))] if ready else []

    def dispatch(self) -> list[Action]:
        return [Dispatch(r.id) for r in self.obs.runs if self.rstate[r.id] == RunState.Placed]

    def release(self) -> list[Action]:
        return [Release(r.id) for r in self.obs.runs
                if not r.released and self.rstate[r.id].terminal]

    # ------------------------------------------------------------ outcomes of apply

    def submit_failed(self, run_id: str, error: str, transient: bool) -> list[Action]:
        """What to do when submitting ``run_id`` failed: a transient refusal within
        ``dispatch_deadline_s`` of its placement is retried (reason and event once);
        otherwise the run Fails and its task is retried or failed."""
        run = self.runs[run_id]
        now = self.obs.now
        waited = now - (run.placed_at if run.placed_at is not None else now)
        if transient and waited < self.policy.dispatch_deadline_s:
            if self.rreason[run_id] == error:
                return []
            self.rreason[run_id] = error
            return [DispatchRetry(run_id, error)]
        reason = f"could not dispatch: {error}"
        self.rstate[run_id], self.rreason[run_id] = RunState.Failed, reason
        return [SetRunState(run_id, RunState.Failed, reason, reason=reason),
                *self.run_failed(run, reason, None)]


def decide(observed: Observed, policy: Policy) -> list[Action]:
    """Every action for one cycle (see the module docstring); pure."""
    return Decider(observed, policy).decide()


__all__ = ["Decider", "Observed", "Policy", "RunView", "TaskView", "WorkflowView",
           "decide", "retry_delay",
           # the actions, re-exported: decide's output vocabulary
           "AbortMove", "Action", "CancelTask", "Dispatch", "DispatchRetry", "FailTask",
           "FinishWorkflow", "MarkTaskReady", "MigrateRun", "PlaceTasks", "RecordStatus",
           "Release", "RemoveSite", "RetryTask", "SetRunState", "StartMove",
           "StopWorkflow", "SucceedTask"]
