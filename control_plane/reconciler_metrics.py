"""The reconciler's gauges, refreshed at the end of every cycle from the store: runs
and workflows per state, queue depths (Ready tasks, Placed runs, Dispatched runs per
site) and the SLO latency ratio of running tasks (monitoring, issue 5). Read-only."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from continuum.model import RunState, TaskState, WorkflowState
from control_plane.federation import Federation
from control_plane.store import RunRow, Store, TaskRow, WorkflowRow
from monitoring.metrics import ControlPlaneMetrics
from monitoring.topology import TopologyModel


def export_gauges(store: Store, metrics: ControlPlaneMetrics, federation: Federation,
                  network: TopologyModel) -> None:
    """Set every gauge from the store's current rows; ``reconcile_lag`` to 0."""
    with store.session() as s:
        for rstate in RunState:
            metrics.runs.labels(rstate.value).set(0)
        for rs, n in s.execute(select(RunRow.state, func.count()).group_by(RunRow.state)):
            metrics.runs.labels(rs.value).set(n)
        for wstate in WorkflowState:
            metrics.workflows.labels(wstate.value).set(0)
        for ws, n in s.execute(select(WorkflowRow.state, func.count())
                               .group_by(WorkflowRow.state)):
            metrics.workflows.labels(ws.value).set(n)
        _queue_gauges(s, metrics, federation, network)
    metrics.reconcile_lag.set(0)


def _queue_gauges(s: Session, m: ControlPlaneMetrics, federation: Federation,
                  network: TopologyModel) -> None:
    m.queue_depth.labels("ready").set(s.scalar(select(func.count()).select_from(TaskRow)
                                               .where(TaskRow.state == TaskState.Ready))
                                      or 0)
    m.queue_depth.labels("placed").set(s.scalar(select(func.count()).select_from(RunRow)
                                                .where(RunRow.state == RunState.Placed))
                                       or 0)
    m.site_queue_depth.clear()
    for rt in federation.sites():
        m.site_queue_depth.labels(rt.spec.name).set(0)
    for site, n in s.execute(select(RunRow.site, func.count())
                             .where(RunRow.state == RunState.Dispatched)
                             .group_by(RunRow.site)):
        m.site_queue_depth.labels(site or "").set(n)
    m.slo_latency_ratio.clear()
    rows = s.execute(select(RunRow.workflow_id, RunRow.task_name, RunRow.node, TaskRow.spec)
                     .join(TaskRow, TaskRow.id == RunRow.task_id)
                     .where(RunRow.state == RunState.Running)).all()
    for wf_id, task_name, node_id, spec in rows:
        slo = (spec or {}).get("slo")
        node = federation.node(node_id or "")
        if not slo or node is None:
            continue
        target = federation.node(slo["target"])
        where = target.location if target is not None else slo["target"]
        rtt = network.rtt_ms(node.location, where)
        m.slo_latency_ratio.labels(wf_id, task_name, slo["target"]).set(
            rtt / float(slo["latencyMs"]))
