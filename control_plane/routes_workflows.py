"""Workflow routes: submit, list, read and cancel (``/v1/workflows``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from continuum.errors import NotFound, Problem, ValidationFailed
from continuum.model import TaskState, WorkflowState
from control_plane.audit import WRITTEN, audit_row
from control_plane.auth import AUDIT_SCOPE_KEY, Principal, audit_tenant
from control_plane.routes_common import (
    MAX_OFFSET,
    FastJSONResponse,
    PrincipalDep,
    SettingsDep,
    StoreDep,
    WorkflowsDep,
    body_of,
    in_tenants,
    iso,
    read_body,
)
from control_plane.routes_runs import event_view, run_view
from control_plane.store import LIVE_WORKFLOW_STATES, EventRow, RunRow, TaskRow, WorkflowRow
from control_plane.validation import parse_document_cached

router = APIRouter(tags=["workflows"])


def waiting_reasons(s: Session, workflow_ids: list[str]) -> dict[str, str]:
    """Workflow id → why a live workflow is held up: the reason of its first Ready task
    that placement could not place (``"task b: unschedulable: no node fits: ..."``); one
    query. Workflows with no such task are absent."""
    out: dict[str, str] = {}
    if not workflow_ids:
        return out
    for wid, name, reason in s.execute(
            select(TaskRow.workflow_id, TaskRow.name, TaskRow.reason)
            .join(WorkflowRow, WorkflowRow.id == TaskRow.workflow_id)
            .where(TaskRow.workflow_id.in_(workflow_ids),
                   TaskRow.state == TaskState.Ready, TaskRow.reason != "",
                   WorkflowRow.state.in_(LIVE_WORKFLOW_STATES))
            .order_by(TaskRow.id)):
        out.setdefault(wid, f"task {name}: {reason}")
    return out


def submit_tenant(principal: Principal, named: str | None, default: str) -> str:
    """The tenant a new workflow of ``principal`` belongs to (see :func:`submit_workflow`).

    Raises:
        ValidationFailed: no tenant named and the caller has several (or none and is no
            admin), at ``metadata.tenant``.
        HTTPException 403: the named tenant is not one of the caller's.
    """
    if named is not None:
        if not principal.can_see(named):
            raise HTTPException(403, f"metadata.tenant: {principal.subject} is not in tenant "
                                     f"{named!r} (its tenants: "
                                     f"{', '.join(sorted(principal.tenants)) or 'none'})")
        return named
    if len(principal.tenants) == 1:
        return next(iter(principal.tenants))
    if principal.is_admin and not principal.tenants:
        return default
    raise ValidationFailed([Problem(["metadata", "tenant"], (
        f"name the tenant: you are in {', '.join(sorted(principal.tenants))}"
        if principal.tenants else "your token has no tenant: ask an admin for one"),
        "tenant_required")])


def visible_workflow(s: Session, workflow_id: str, principal: Principal) -> WorkflowRow:
    """The workflow, if the caller may see it.

    Raises:
        NotFound: no such workflow, or it is of a tenant the caller is not in (the same
            answer, so other tenants' workflow ids are not revealed).
    """
    wf = s.get(WorkflowRow, workflow_id)
    if wf is None or not principal.can_see(wf.tenant):
        raise NotFound(f"workflow {workflow_id!r} does not exist")
    return wf


def workflow_summary(wf: WorkflowRow, counts: dict[str, int] | None = None,
                     waiting: str = "") -> dict[str, Any]:
    """The workflow's list entry; ``reason`` is its own, else ``waiting`` (see
    :func:`waiting_reasons`)."""
    out: dict[str, Any] = {"id": wf.id, "name": wf.name, "tenant": wf.tenant, "state": wf.state,
                           "reason": wf.reason or waiting,
                           "createdAt": iso(wf.created_at), "finishedAt": iso(wf.finished_at)}
    if counts is not None:
        out["tasks"] = counts
    return out


@router.post("/v1/workflows", status_code=201, openapi_extra=body_of("WorkflowDocument"),
             summary="Submit a workflow (JSON or YAML)")
async def submit_workflow(request: Request, workflows: WorkflowsDep, principal: PrincipalDep,
                          settings: SettingsDep) -> JSONResponse:
    """Validate, store and start a Workflow document.

    Send ``Content-Type: application/yaml`` for YAML. A 422 lists every problem:
    schema errors, duplicate or unknown task names, dependency cycles, inputs no
    task produces, and tasks no node could ever hold. The workflow's tenant is
    ``metadata.tenant``, else the caller's only tenant (an admin in none: the
    ``auth_default_tenant``); a caller in several must name one (422), and naming one
    it is not in is a 403. While the backlog of tasks waiting to be placed is over
    ``submit_max_backlog_tasks``, a 429 with ``Retry-After`` (s) and ``"reason":
    "backlog"``. The 201 comes once the workflow, its tasks and the call's audit record
    are committed (one transaction, shared with concurrent submits).
    """
    doc = parse_document_cached(await read_body(request), request.headers.get("content-type"))
    tenant = submit_tenant(principal, doc.metadata.tenant, settings.auth_default_tenant)
    audit_tenant(request, tenant)
    record = request.scope.get(AUDIT_SCOPE_KEY)
    wf = await run_in_threadpool(workflows.submit, doc, tenant,
                                 lambda: audit_row(request.scope, 201))
    if isinstance(record, dict):
        record[WRITTEN] = True  # committed with the workflow
    return FastJSONResponse(workflow_summary(wf), status_code=201,
                        headers={"Location": f"/v1/workflows/{wf.id}"})


@router.get("/v1/workflows", summary="List workflows")
def list_workflows(store: StoreDep, principal: PrincipalDep,
                   state: WorkflowState | None = None,
                   limit: int = Query(50, ge=1, le=500),
                   offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> dict[str, Any]:
    """Newest first; filter by ``state``; paginate with ``limit`` and ``offset``."""
    with store.session() as s:
        q = in_tenants(select(WorkflowRow).options(defer(WorkflowRow.document)), principal)
        cq = in_tenants(select(func.count()).select_from(WorkflowRow), principal)
        if state is not None:
            q = q.where(WorkflowRow.state == state)
            cq = cq.where(WorkflowRow.state == state)
        total = s.scalar(cq) or 0
        rows = s.scalars(q.order_by(WorkflowRow.created_at.desc()).limit(limit)
                         .offset(offset)).all()
        counts: dict[str, dict[str, int]] = {r.id: {} for r in rows}
        if rows:
            for wid, st, n in s.execute(
                    select(TaskRow.workflow_id, TaskRow.state, func.count())
                    .where(TaskRow.workflow_id.in_(list(counts)))
                    .group_by(TaskRow.workflow_id, TaskRow.state)):
                counts[wid][st.value] = n
        waiting = waiting_reasons(s, list(counts))
        return {"items": [workflow_summary(r, counts[r.id], waiting.get(r.id, ""))
                          for r in rows],
                "total": total, "limit": limit, "offset": offset}


@router.get("/v1/workflows/{workflow_id}", summary="A workflow in full")
def get_workflow(workflow_id: str, store: StoreDep, principal: PrincipalDep) -> dict[str, Any]:
    """Tasks, runs (with placements), events and the submitted document."""
    with store.session() as s:
        wf = visible_workflow(s, workflow_id, principal)
        tasks = s.scalars(select(TaskRow).where(TaskRow.workflow_id == wf.id)
                          .order_by(TaskRow.id)).all()
        runs = s.scalars(select(RunRow).where(RunRow.workflow_id == wf.id)
                         .order_by(RunRow.created_at)).all()
        events = s.scalars(select(EventRow).where(EventRow.workflow_id == wf.id)
                           .order_by(EventRow.id)).all()
        return {**workflow_summary(wf, waiting=waiting_reasons(s, [wf.id]).get(wf.id, "")),
                "tasks": [{"name": t.name, "state": t.state, "reason": t.reason,
                           "attempts": t.attempts, "dependsOn": t.depends_on,
                           "runs": [r.id for r in runs if r.task_id == t.id]} for t in tasks],
                "runs": [run_view(r, tail=False) for r in runs],
                "events": [event_view(e) for e in events],
                "document": wf.document}


@router.delete("/v1/workflows/{workflow_id}", status_code=202, summary="Cancel a workflow")
def cancel_workflow(workflow_id: str, workflows: WorkflowsDep, store: StoreDep,
                    principal: PrincipalDep, request: Request) -> dict[str, Any]:
    """Cancels every run still placed or running, on every backend; returns 202.

    Cancelling a workflow that is already cancelled is harmless; one that succeeded
    or failed is a 409.
    """
    with store.session() as s:
        audit_tenant(request, visible_workflow(s, workflow_id, principal).tenant)
    return workflow_summary(workflows.cancel(workflow_id))


__all__ = ["router", "submit_tenant", "visible_workflow", "workflow_summary"]
