"""Run routes: list runs and read one with its placement explanation (``/v1/runs``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from continuum.errors import NotFound
from continuum.model import RunState
from control_plane.routes_common import MAX_OFFSET, PrincipalDep, StoreDep, WorkflowsDep, in_tenants, iso
from control_plane.store import EventRow, RunRow, WorkflowRow

router = APIRouter(tags=["runs"])


def run_view(r: RunRow, *, tail: bool = True) -> dict[str, Any]:
    """A run as the API shows it; ``observed`` holds measured figures beside ``placement``."""
    view: dict[str, Any] = {
        "id": r.id, "workflowId": r.workflow_id, "task": r.task_name, "attempt": r.attempt,
        "state": r.state, "reason": r.reason, "site": r.site, "node": r.node,
        "simulated": r.simulated, "createdAt": iso(r.created_at), "placedAt": iso(r.placed_at),
        "dispatchedAt": iso(r.dispatched_at), "startedAt": iso(r.started_at),
        "finishedAt": iso(r.finished_at), "exitCode": r.exit_code,
        "placement": r.placement, "handle": r.handle,
        "observed": {"runtimeS": r.runtime_s, "energyJ": r.energy_j,
                     "bytesIn": r.bytes_in, "bytesOut": r.bytes_out,
                     "cpuTimeS": r.cpu_time_s, "maxRssBytes": r.max_rss_bytes,
                     "accounting": r.accounting},
    }
    if tail:
        view["outputTail"] = r.output_tail
    return view


def event_view(e: EventRow) -> dict[str, Any]:
    return {"at": iso(e.at), "type": e.type, "message": e.message, "runId": e.run_id}


@router.get("/v1/runs", summary="List runs")
def list_runs(store: StoreDep, principal: PrincipalDep, workflow: str | None = None,
              state: RunState | None = None,
              limit: int = Query(100, ge=1, le=1000),
              offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> dict[str, Any]:
    with store.session() as s:
        q = in_tenants(select(RunRow).join(WorkflowRow, WorkflowRow.id == RunRow.workflow_id),
                       principal)
        if workflow:
            q = q.where(RunRow.workflow_id == workflow)
        if state:
            q = q.where(RunRow.state == state)
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.order_by(RunRow.created_at.desc()).limit(limit)
                         .offset(offset)).all()
        return {"items": [run_view(r, tail=False) for r in rows], "total": total,
                "limit": limit, "offset": offset}


@router.get("/v1/runs/{run_id}", summary="A run with its placement explanation")
def get_run(run_id: str, store: StoreDep, workflows: WorkflowsDep, principal: PrincipalDep,
            tail: int = Query(50, ge=0, le=1000)) -> dict[str, Any]:
    """The run, its placement (per-plugin scores, predictions), observed figures,
    its events and the last ``tail`` lines of its output."""
    with store.session() as s:
        r = s.get(RunRow, run_id)
        wf = s.get(WorkflowRow, r.workflow_id) if r is not None else None
        if r is None or wf is None or not principal.can_see(wf.tenant):
            raise NotFound(f"run {run_id!r} does not exist")
        view = run_view(r)
        view["events"] = [event_view(e) for e in s.scalars(
            select(EventRow).where(EventRow.run_id == run_id).order_by(EventRow.id))]
    if r.state in (RunState.Dispatched, RunState.Running) and r.handle:
        view["outputTail"] = workflows.live_logs(r, tail) or view["outputTail"]
    if tail and view["outputTail"]:
        view["outputTail"] = "\n".join(view["outputTail"].splitlines()[-tail:])
    return view


__all__ = ["event_view", "router", "run_view"]
