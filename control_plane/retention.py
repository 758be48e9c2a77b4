"""Retention: finished workflows and old audit rows are deleted after a stated age.

Without it the store only grows: the live bench's 100,000-task run left a 602 MB SQLite
file, and a tenant's artifacts counted against its quota forever.

* A **workflow** that ended (Succeeded, Failed or Cancelled) is deleted with its tasks,
  runs, events and artifacts (rows and bytes) ``workflow_retention_s`` after it finished —
  what Kubernetes' TTL-after-finished controller does for Jobs
  (``ttlSecondsAfterFinished``) and Argo's ``ttlStrategy`` for workflows. A workflow with
  a run not yet released (its backend resources not yet cleaned up) waits until it is:
  deleting the run's row would leak them.
* An **audit** row is deleted ``audit_retention_s`` after the call it records.

0 keeps them forever. The leader sweeps (a reconcile-cycle hook): once every
:data:`SWEEP_INTERVAL_S`, at most :data:`BATCH` workflows (:data:`TASK_BUDGET` tasks) and
:data:`AUDIT_BATCH` audit rows a transaction, fenced in that transaction, one of each per
cycle, so a long backlog (retention just
enabled on a big store) is worked off over several cycles instead of holding one up.
Deleted rows free pages that SQLite reuses (the file does not shrink: ``VACUUM`` does
that, offline). Model retraining learns from the stored runs (beside the twin's
samples), so it sees the last ``workflow_retention_s`` of work (a scheduled retrain that
finds none keeps a served set learned from recorded runs:
:meth:`control_plane.models.ModelService.retrain`)."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, exists, func, select

from control_plane.store import (
    ArtifactRow,
    AuditRow,
    EventRow,
    RunRow,
    Store,
    TaskRow,
    WorkflowRow,
)
from monitoring.metrics import ControlPlaneMetrics

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0
"""Seconds between sweeps while nothing is left over: retention is counted in days, so
a minute late is nothing; a sweep that filled its batch runs again the next cycle."""
BATCH = 500
"""Most workflows deleted in one transaction (~40,000 row deletes for workflows of 10
tasks: each carries its tasks, runs and events)."""
TASK_BUDGET = 20_000
"""Most tasks of the workflows deleted in one transaction (at least one workflow): a
batch of big workflows is cut short, so one transaction never holds SQLite's write lock
for long (API writes wait for it)."""
AUDIT_BATCH = 5000
"""Most audit rows deleted in one transaction."""


class Retention:
    """Deletes what outlived its retention (see the module docstring).

    ``store``: the leader's (fenced) store; ``artifact_root``: the directory whose
    ``<workflow id>/`` subdirectories hold each workflow's artifact bytes
    (:class:`control_plane.artifacts.LocalArtifactStore`); ``workflow_retention_s``,
    ``audit_retention_s``: ages (s), 0 = keep forever."""

    def __init__(self, store: Store, artifact_root: Path, metrics: ControlPlaneMetrics, *,
                 workflow_retention_s: float, audit_retention_s: float):
        self.store = store
        self.artifact_root = artifact_root
        self.metrics = metrics
        self.workflow_retention_s = workflow_retention_s
        self.audit_retention_s = audit_retention_s
        self._next = 0.0
        """When the next sweep is due (epoch s); 0: at the next cycle."""

    def on_cycle(self, now: float) -> None:
        """The reconcile-cycle hook: sweep when due (see the module docstring); a sweep
        that fails is tried again a sweep interval later, not every cycle."""
        if now < self._next:
            return
        self._next = now + SWEEP_INTERVAL_S
        if self.sweep(now):
            self._next = now  # a full batch: more may be due, the next cycle sweeps again

    def sweep(self, now: float) -> bool:
        """One batch of each kind past its retention at ``now`` (epoch s) deleted.

        Returns:
            whether a batch was full (more may be left for the next call).
        Raises:
            whatever the store's fence raises (the replica no longer leads).
        """
        full = False
        if self.workflow_retention_s > 0:
            full |= self._workflows(now - self.workflow_retention_s) >= BATCH
        if self.audit_retention_s > 0:
            full |= self._audit(now - self.audit_retention_s) >= AUDIT_BATCH
        return full

    def _workflows(self, before: float) -> int:
        """Delete the workflows finished before ``before`` (epoch s), at most :data:`BATCH`
        and :data:`TASK_BUDGET` tasks; returns how many, or :data:`BATCH` when the batch
        was cut by the task budget (more are due)."""
        cutoff = datetime.fromtimestamp(before, UTC)
        unreleased = exists().where(RunRow.workflow_id == WorkflowRow.id, ~RunRow.released)
        with self.store.session() as s:
            # finished_at is set only when a workflow ends (and cleared at submit), so the
            # range alone selects finished ones, over its index
            ids = list(s.scalars(select(WorkflowRow.id)
                                 .where(WorkflowRow.finished_at < cutoff, ~unreleased)
                                 .order_by(WorkflowRow.finished_at).limit(BATCH)))
            if not ids:
                return 0
            sizes = dict(s.execute(select(TaskRow.workflow_id, func.count())
                                   .where(TaskRow.workflow_id.in_(ids))
                                   .group_by(TaskRow.workflow_id)).all())
            take: list[str] = []
            tasks = 0
            for wf in ids:
                tasks += sizes.get(wf, 0)
                if take and tasks > TASK_BUDGET:
                    break
                take.append(wf)
            self.store.fence_in(s)  # a fenced (old) leader deletes nothing
            for table in (EventRow, ArtifactRow, RunRow, TaskRow):
                s.execute(delete(table).where(table.workflow_id.in_(take)))
            s.execute(delete(WorkflowRow).where(WorkflowRow.id.in_(take)))
        for wf in take:  # after the commit: a crash before this leaves bytes, not dangling rows
            try:
                shutil.rmtree(self.artifact_root / wf)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("retention: cannot remove the artifacts of deleted workflow %s "
                            "(%s): %s", wf, self.artifact_root / wf, e)
        self.metrics.retention_deleted.labels("workflows").inc(len(take))
        log.info("retention: deleted %d workflows finished before %s with their tasks, runs, "
                 "events and artifacts (workflow_retention_s=%g)", len(take),
                 cutoff.isoformat(timespec="seconds"), self.workflow_retention_s)
        return BATCH if len(take) < len(ids) else len(take)

    def _audit(self, before: float) -> int:
        cutoff = datetime.fromtimestamp(before, UTC)
        with self.store.session() as s:
            ids = list(s.scalars(select(AuditRow.id).where(AuditRow.at < cutoff)
                                 .order_by(AuditRow.at).limit(AUDIT_BATCH)))
            if not ids:
                return 0
            self.store.fence_in(s)
            s.execute(delete(AuditRow).where(AuditRow.id.in_(ids)))
        self.metrics.retention_deleted.labels("audit").inc(len(ids))
        log.info("retention: deleted %d audit rows older than %s (audit_retention_s=%g)",
                 len(ids), cutoff.isoformat(timespec="seconds"), self.audit_retention_s)
        return len(ids)
