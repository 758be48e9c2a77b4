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
:data:`SWEEP_INTERVAL_S`, at most :data:`BATCH` workflows and :data:`AUDIT_BATCH` audit
rows a transaction, one transaction of each per cycle, so a long backlog (retention just
enabled on a big store) is worked off over several cycles instead of holding one up.
Deleted rows free pages that SQLite reuses (the file does not shrink: ``VACUUM`` does
that, offline)."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, exists, select

from continuum.model import WorkflowState
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
"""Most workflows deleted in one transaction: each carries its tasks, runs and events
(~80 rows for a workflow of 10 tasks), so a batch is ~40,000 row deletes."""
AUDIT_BATCH = 5000
"""Most audit rows deleted in one transaction."""
FINISHED = (WorkflowState.Succeeded, WorkflowState.Failed, WorkflowState.Cancelled)


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
        """The reconcile-cycle hook: sweep when due (see the module docstring)."""
        if now < self._next:
            return
        full = self.sweep(now)
        self._next = now if full else now + SWEEP_INTERVAL_S

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
        cutoff = datetime.fromtimestamp(before, UTC)
        unreleased = exists().where(RunRow.workflow_id == WorkflowRow.id, ~RunRow.released)
        with self.store.session() as s:
            ids = list(s.scalars(
                select(WorkflowRow.id)
                .where(WorkflowRow.finished_at < cutoff, WorkflowRow.state.in_(FINISHED),
                       ~unreleased)
                .order_by(WorkflowRow.finished_at).limit(BATCH)))
        if not ids:
            return 0
        self.store.check_fence()  # a fenced (old) leader deletes nothing
        with self.store.session() as s:
            for table in (EventRow, ArtifactRow, RunRow, TaskRow):
                s.execute(delete(table).where(table.workflow_id.in_(ids)))
            s.execute(delete(WorkflowRow).where(WorkflowRow.id.in_(ids)))
        for wf in ids:  # after the commit: a crash before this leaves bytes, not dangling rows
            shutil.rmtree(self.artifact_root / wf, ignore_errors=True)
        self.metrics.retention_deleted.labels("workflows").inc(len(ids))
        log.info("retention: deleted %d workflows finished before %s with their tasks, runs, "
                 "events and artifacts (workflow_retention_s=%g)", len(ids),
                 cutoff.isoformat(timespec="seconds"), self.workflow_retention_s)
        return len(ids)

    def _audit(self, before: float) -> int:
        cutoff = datetime.fromtimestamp(before, UTC)
        with self.store.session() as s:
            ids = list(s.scalars(select(AuditRow.id).where(AuditRow.at < cutoff)
                                 .order_by(AuditRow.id).limit(AUDIT_BATCH)))
        if not ids:
            return 0
        self.store.check_fence()
        with self.store.session() as s:
            s.execute(delete(AuditRow).where(AuditRow.id.in_(ids)))
        self.metrics.retention_deleted.labels("audit").inc(len(ids))
        log.info("retention: deleted %d audit rows older than %s (audit_retention_s=%g)",
                 len(ids), cutoff.isoformat(timespec="seconds"), self.audit_retention_s)
        return len(ids)
