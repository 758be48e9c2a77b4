"""Workflow operations the API calls: submit, cancel, check an upload, read live logs.

They write desired state only (a new workflow with its tasks, a workflow's
``Cancelling``); the reconciler turns it into runs and backend calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from adapters.base import Handle
from continuum.errors import AdapterError, Conflict, NotFound
from continuum.model import RunState, TaskState, WorkflowDocument, WorkflowState
from control_plane.artifact_access import CapabilityRefused
from control_plane.federation import Federation
from control_plane.store import (
    ArtifactRow,
    RunRow,
    Store,
    TaskRow,
    WorkflowRow,
    add_event,
    new_id,
)
from control_plane.validation import check_workflow, effective_dependencies

log = logging.getLogger(__name__)


class WorkflowService:
    """``wake``: runs the reconciler's next cycle now (it acts on what was written)."""

    def __init__(self, store: Store, federation: Federation, wake: Callable[[], None]) -> None:
        self.store = store
        self.federation = federation
        self.wake = wake

    def submit(self, doc: WorkflowDocument, tenant: str = "default") -> WorkflowRow:
        """Check and store a workflow of ``tenant`` with its tasks in one transaction;
        returns its row.

        Raises:
            ValidationFailed: see :func:`control_plane.validation.check_workflow`.
        """
        check_workflow(doc, self.federation.nodes())
        deps = effective_dependencies(doc)
        wf = WorkflowRow(id=new_id("wf"), name=doc.metadata.name,
                         state=WorkflowState.Pending, document=doc.wire(), tenant=tenant)
        with self.store.session() as s:
            s.add(wf)
            s.flush()
            for t in doc.spec.tasks:
                s.add(TaskRow(workflow_id=wf.id, name=t.name, spec=t.wire(),
                              depends_on=deps[t.name],
                              state=TaskState.Waiting if deps[t.name] else TaskState.Ready))
            add_event(s, "WorkflowAccepted", f"{len(doc.spec.tasks)} tasks", workflow_id=wf.id)
        log.info("workflow %s (%s) of tenant %s accepted with %d tasks", wf.id, wf.name, tenant,
                 len(doc.spec.tasks))
        self.wake()
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


__all__ = ["WorkflowService"]
