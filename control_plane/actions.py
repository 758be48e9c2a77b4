"""The reconciler's actions: what :func:`control_plane.decide.decide` (and the other
producers: the migration controller, site removal) ask ``apply``
(:mod:`control_plane.apply`) to do. Plain frozen dataclasses; ids, not rows."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import RunStatus
from continuum.model import RunState, TaskState, WorkflowState


@dataclass(frozen=True)
class SetRunState:
    """Move a run to ``state`` (an event ``Run<state>`` with ``message``). ``status``:
    the backend's figures to record (times, exit code, bytes, energy, outputs);
    ``reason``: the run's new reason (None keeps it); ``runtime_s``: the runtime to
    record for a finished run (s)."""

    run_id: str
    state: RunState
    message: str
    reason: str | None = None
    status: RunStatus | None = None
    runtime_s: float | None = None


@dataclass(frozen=True)
class RecordStatus:
    """Record what the backend said of a run whose state does not change (its start
    time, output tail, whether it is simulated)."""

    run_id: str
    status: RunStatus


@dataclass(frozen=True)
class RetryTask:
    """The task goes back to Ready, not placed before ``not_before`` (epoch s)."""

    task_id: int
    run_id: str
    not_before: float
    reason: str


@dataclass(frozen=True)
class FailTask:
    task_id: int
    run_id: str
    reason: str


@dataclass(frozen=True)
class SucceedTask:
    task_id: int


@dataclass(frozen=True)
class MarkTaskReady:
    task_id: int


@dataclass(frozen=True)
class CancelTask:
    """A Waiting task whose dependency failed or was cancelled."""

    task_id: int
    reason: str


@dataclass(frozen=True)
class StopWorkflow:
    """Cancel ``run_ids`` on their backends (each ends Cancelled with ``reason``); if every
    backend accepted, every unfinished task ends ``task_state`` and the workflow ends
    ``finish`` with ``finish_reason``. If one refused, nothing else changes and the next
    cycle decides the same again."""

    workflow_id: str
    run_ids: tuple[str, ...]
    reason: str
    finish: WorkflowState
    finish_reason: str
    task_state: TaskState = TaskState.Cancelled


@dataclass(frozen=True)
class FinishWorkflow:
    workflow_id: str
    state: WorkflowState
    reason: str = ""


@dataclass(frozen=True)
class PlaceTasks:
    """Place these Ready tasks in one batch (capacity deducted as it goes)."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True)
class Dispatch:
    """Submit a Placed run to its backend (idempotent: the run id is the request id)."""

    run_id: str


@dataclass(frozen=True)
class DispatchRetry:
    """The backend refused transiently; the run stays Placed with ``error`` as reason."""

    run_id: str
    error: str


@dataclass(frozen=True)
class Release:
    """Release a finished run's backend resources (its handle)."""

    run_id: str


@dataclass(frozen=True)
class MigrateRun:
    """Cancel the run on its backend and end it Migrated (``label``: the metric's reason,
    e.g. ``node-lost``, ``better-node``). If no other run of its task is active, the task
    goes back to Ready at once, the attempt not counted. A refused cancel leaves the run
    active (the producer asks again next cycle)."""

    run_id: str
    label: str
    message: str


@dataclass(frozen=True)
class StartMove:
    """Make-before-break: a new Placed run ``new_run_id`` on ``node`` of ``site``
    replacing ``run_id`` (which must still be Dispatched or Running); ``placement``: the
    decision's wire form; ``message``/``placed_message``: the RunMigrating and RunPlaced
    events."""

    run_id: str
    new_run_id: str
    site: str
    node: str
    placement: dict[str, object]
    message: str
    placed_message: str


@dataclass(frozen=True)
class AbortMove:
    """A replacing run failed; the replaced one keeps serving (an event only)."""

    run_id: str
    new_run_id: str
    message: str


@dataclass(frozen=True)
class RemoveSite:
    """Forget a site; with ``cancel_runs`` its dispatched runs are cancelled on the
    backend first (a refusal removes nothing). Requested through
    ``Reconciler.request``; its result is ``{"site", "runs", "cancelled", "left"}``."""

    name: str
    cancel_runs: bool


Action = (SetRunState | RecordStatus | RetryTask | FailTask | SucceedTask | MarkTaskReady
          | CancelTask | StopWorkflow | FinishWorkflow | PlaceTasks | Dispatch | DispatchRetry
          | Release | MigrateRun | StartMove | AbortMove | RemoveSite)


__all__ = ["Action", "SetRunState", "RecordStatus", "RetryTask", "FailTask", "SucceedTask",
           "MarkTaskReady", "CancelTask", "StopWorkflow", "FinishWorkflow", "PlaceTasks",
           "Dispatch", "DispatchRetry", "Release", "MigrateRun", "StartMove", "AbortMove",
           "RemoveSite"]
