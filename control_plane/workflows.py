"""Workflow operations the API calls: submit, cancel, check an upload, read live logs.

They write desired state only (a new workflow with its tasks, a workflow's
``Cancelling``); the reconciler turns it into runs and backend calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session

from adapters.base import Handle
from continuum.errors import AdapterError, Conflict, NotFound
from continuum.model import RunState, TaskState, WorkflowDocument, WorkflowState
from control_plane.artifact_access import CapabilityRefused
from control_plane.federation import Federation
from control_plane.leader import notify_wake_in
from control_plane.store import (
    ArtifactRow,
    AuditRow,
    GroupCommit,
    RunRow,
    Store,
    TaskRow,
    WorkflowRow,
    add_event,
    backlog_tasks,
    insert_later,
    new_id,
    utcnow,
)
from control_plane.validation import check_workflow, effective_dependencies

log = logging.getLogger(__name__)

_WORKFLOW_COLUMNS = ("id", "name", "state", "reason", "document", "tenant", "created_at",
                     "updated_at", "finished_at")
_AUDIT_COLUMNS = ("at", "subject", "token_id", "tenant", "method", "path", "status", "outcome")


class Backlogged(Exception):
    """A submit refused because too many tasks already wait to be placed (the API's 429).
    ``backlog`` and ``bound`` in tasks, ``retry_after_s`` in seconds."""

    def __init__(self, backlog: int, bound: int, retry_after_s: int) -> None:
        self.backlog, self.bound, self.retry_after_s = backlog, bound, retry_after_s
        super().__init__(f"backlog: {backlog} tasks are waiting to be placed, the bound is "
                         f"{bound} (submit_max_backlog_tasks); retry after {retry_after_s} s")


class Admission:
    """Admission control of submits: refuses a workflow while the backlog (tasks
    ``Waiting`` or ``Ready``, as :func:`~control_plane.store.backlog_tasks` counts them in
    the shared store, so every replica sees the same) would pass ``bound`` tasks.

    The count is read at most every ``recount_s`` seconds; between reads the tasks this
    replica accepted are added to it, so one replica never overshoots the bound, and N
    replicas together by at most what the others accept in ``recount_s``. A workflow
    larger than the bound is accepted when the backlog is empty (else it never could be).
    ``observe(backlog)`` receives each estimate (the metrics gauge)."""

    def __init__(self, store: Store, bound: int, retry_after_s: int,
                 observe: Callable[[int], None] = lambda _: None,
                 recount_s: float = 0.5) -> None:
        self.store, self.bound, self.retry_after_s = store, bound, retry_after_s
        self.observe, self.recount_s = observe, recount_s
        self._lock = threading.Lock()
        self._counted = 0
        self._added = 0
        self._at = -float("inf")

    def admit(self, tasks: int) -> None:
        """Count ``tasks`` more into the backlog, or refuse them.

        Raises:
            Backlogged: the backlog plus ``tasks`` would be over the bound.
        """
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.recount_s:
                with self.store.session() as s:
                    self._counted, self._added, self._at = backlog_tasks(s), 0, now
            backlog = self._counted + self._added
            self.observe(backlog)
            if backlog > 0 and backlog + tasks > self.bound:
                raise Backlogged(backlog, self.bound, self.retry_after_s)
            self._added += tasks


class WorkflowService:
    """``wake``: runs the reconciler's next cycle now (it acts on what was written);
    ``admission``: the backlog bound submits are checked against (None: no bound);
    ``wake_local``: given, a submit wakes the leader by a NOTIFY inside its own
    transaction (:func:`~control_plane.leader.notify_wake_in`, once per group commit)
    and calls this for this replica's loop, instead of ``wake`` (a transaction of its
    own per submit on PostgreSQL)."""

    def __init__(self, store: Store, federation: Federation, wake: Callable[[], None],
                 admission: Admission | None = None,
                 wake_local: Callable[[], None] | None = None) -> None:
        self.store = store
        self.federation = federation
        self.wake = wake
        self.admission = admission
        self.wake_local = wake_local
        self._writes = GroupCommit(store)

    def submit(self, doc: WorkflowDocument, tenant: str = "default",
               audit: Callable[[], AuditRow] | None = None) -> WorkflowRow:
        """Check and store a workflow of ``tenant`` with its tasks (and ``audit()``, the
        call's audit record, when given) in one transaction; returns its row once it is
        committed. Concurrent submits share a commit (:class:`GroupCommit`).

        Raises:
            ValidationFailed: see :func:`control_plane.validation.check_workflow`.
            Backlogged: the backlog is over the bound (see :class:`Admission`).
        """
        check_workflow(doc, self.federation.nodes())
        if self.admission is not None:
            self.admission.admit(len(doc.spec.tasks))
        deps = effective_dependencies(doc)
        wf_id, document = new_id("wf"), doc.wire()
        tasks = [(t.name, t.wire(), deps[t.name]) for t in doc.spec.tasks]

        def write(s: Session) -> WorkflowRow:
            # rows, not the ORM's unit of work, inserted with the rest of the group's
            # (one executemany a table for the whole group commit)
            now = utcnow()
            wf = WorkflowRow(id=wf_id, name=doc.metadata.name, state=WorkflowState.Pending,
                             reason="", document=document, tenant=tenant, created_at=now,
                             updated_at=now, finished_at=None)
            insert_later(s, WorkflowRow, ({c: getattr(wf, c) for c in _WORKFLOW_COLUMNS},))
            insert_later(s, TaskRow, (
                {"workflow_id": wf_id, "name": name, "spec": spec, "depends_on": after,
                 "reason": "", "attempts": 0,
                 "state": TaskState.Waiting if after else TaskState.Ready}
                for name, spec, after in tasks))
            add_event(s, "WorkflowAccepted", f"{len(tasks)} tasks", workflow_id=wf_id)
            if audit is not None:
                row = audit()
                insert_later(s, AuditRow, ({c: getattr(row, c) for c in _AUDIT_COLUMNS},))
            if self.wake_local is not None:
                notify_wake_in(s)
            return wf

        wf: WorkflowRow = self._writes.write(write)
        log.info("workflow %s (%s) of tenant %s accepted with %d tasks", wf.id, wf.name, tenant,
                 len(tasks))
        (self.wake_local or self.wake)()
        return wf

    def cancel(self, workflow_id: str) -> WorkflowRow:
        """Ask for the workflow to be cancelled (it becomes Cancelling; the reconciler
        cancels its runs). Harmless on a cancelled workflow; returns its row.

        Raises:
            NotFound: no such workflow.
            Conflict: it already succeeded or failed.
        """
        with self.store.session() as s:
            wf = s.get(WorkflowRow, workflow_id)
            if wf is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            if wf.state in (WorkflowState.Succeeded, WorkflowState.Failed):
                raise Conflict(f"workflow {workflow_id} already {wf.state.lower()}; "
                               "there is nothing left to cancel")
            if wf.state not in (WorkflowState.Cancelling, WorkflowState.Cancelled):
                wf.state = WorkflowState.Cancelling
                add_event(s, "WorkflowCancelling", "cancellation requested", workflow_id=wf.id)
        self.wake()
        return wf

    def check_upload(self, workflow_id: str, name: str, run_id: str) -> str | None:
        """Check run ``run_id`` may upload output ``name`` now; returns the run's node.

        An output is immutable once a run that uploaded it succeeded: no other run (a
        retry, a migrated copy, a forger holding another run's capability) replaces it.

        Raises:
            NotFound: no such workflow, or no such run of it.
            Conflict: the workflow or the run already ended, or the artifact was produced
                by a run that succeeded.
            CapabilityRefused: ``name`` is not a declared output of the run's task.
        """
        with self.store.session() as s:
            wf = s.get(WorkflowRow, workflow_id)
            if wf is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            if wf.state.terminal:
                raise Conflict(f"workflow {workflow_id} already {wf.state.lower()}; "
                               "its artifacts can no longer change")
            run = s.get(RunRow, run_id)
            if run is None or run.workflow_id != workflow_id:
                raise NotFound(f"run {run_id!r} is not a run of workflow {workflow_id}")
            if run.state.terminal:
                raise Conflict(f"run {run_id} already {run.state.lower()}; its outputs are closed")
            task = s.get(TaskRow, run.task_id)
            outputs = [o.get("name") for o in (task.spec.get("outputs") or [])] if task else []
            if name not in outputs:
                raise CapabilityRefused(f"artifact {name!r} is not a declared output of run {run_id} "
                                f"(task {run.task_name}; outputs: {', '.join(outputs) or 'none'})")
            art = s.get(ArtifactRow, (workflow_id, name))
            if art is not None and art.run_id is not None and art.run_id != run_id:
                producer = s.get(RunRow, art.run_id)
                if producer is not None and producer.state == RunState.Succeeded:
                    raise Conflict(f"artifact {name!r} was produced by run {art.run_id}, which "
                                   "succeeded; a succeeded run's outputs are immutable")
            return run.node

    def live_logs(self, run: RunRow, tail: int) -> str:
        """The last ``tail`` lines of a live run's output from its backend ("" if none)."""
        adapter = self.federation.get_adapter(run.site or "")
        if adapter is None or not run.handle:
            return ""
        try:
            return adapter.logs(Handle.from_json(run.handle), tail)
        except AdapterError as e:
            return f"(logs unavailable: {e})"


__all__ = ["Admission", "Backlogged", "WorkflowService"]
