"""The REST API (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

Errors share one shape: ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``
for 422 (each problem naming its field and the fix; an oversized body is a 422 of
type ``body_too_large``) and ``{"detail": "..."}`` for 404, 409 and 503.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select

import continuum
from continuum.errors import AdapterError, Conflict, NotFound, Problem, ValidationFailed
from continuum.model import (
    Node,
    RunState,
    SiteSpec,
    TaskState,
    Tier,
    WorkflowDocument,
    WorkflowState,
)
from control_plane import routes_devices, routes_kubernetes, routes_models, routes_sites
from control_plane.artifacts import check_name
from control_plane.store import EventRow, RunRow, TaskRow, WorkflowRow, add_event
from control_plane.validation import parse_body, parse_document, pydantic_problems
from monitoring.catalog import monitoring_problems

if TYPE_CHECKING:
    from control_plane.server import ControlPlane

MAX_BODY_BYTES = 1 << 20
"""Largest workflow or site document accepted (bytes)."""

_DOC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/WorkflowDocument"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/WorkflowDocument"}},
        },
    }
}
_SITE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SiteSpec"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/SiteSpec"}},
        },
    }
}


def _iso(dt: Any) -> str | None:
    return dt.isoformat() if dt is not None else None


def run_view(r: RunRow, *, tail: bool = True) -> dict[str, Any]:
    """A run as the API shows it; ``observed`` holds measured figures beside ``placement``."""
    view: dict[str, Any] = {
        "id": r.id, "workflowId": r.workflow_id, "task": r.task_name, "attempt": r.attempt,
        "state": r.state, "reason": r.reason, "site": r.site, "node": r.node,
        "simulated": r.simulated, "createdAt": _iso(r.created_at), "placedAt": _iso(r.placed_at),
        "dispatchedAt": _iso(r.dispatched_at), "startedAt": _iso(r.started_at),
        "finishedAt": _iso(r.finished_at), "exitCode": r.exit_code,
        "placement": r.placement, "handle": r.handle,
        "observed": {"runtimeS": r.runtime_s, "energyJ": r.energy_j,
                     "bytesIn": r.bytes_in, "bytesOut": r.bytes_out},
    }
    if tail:
        view["outputTail"] = r.output_tail
    return view


def node_view(n: Node, now: float) -> dict[str, Any]:
    """A node as the API shows it, plus ``live``: utilisation, power and their age (s)."""
    view = n.wire()
    for name, m in view.get("metrics", {}).items():
        m["ageS"] = round(now - n.metrics[name].at.timestamp(), 3)
    cpu, power = n.metrics.get("cpu_utilisation"), n.metrics.get("power_watts")
    own = "twin" if n.simulated else "telemetry"  # values the adapter reported itself
    age = round(now - n.observed_at.timestamp(), 3) if n.observed_at is not None else None
    power_src = own
    if cpu is not None and cpu.source.startswith("prometheus:"):
        power_src = "model"  # measured load, no power meter: the node's linear power model
    view["live"] = {
        "utilisation": n.utilisation,
        "utilisationAgeS": age,
        "utilisationSource": cpu.source if cpu else (own if n.utilisation is not None else None),
        "memoryUtilisation": n.memory_utilisation,
        "powerWatts": n.power_watts,
        "powerAgeS": round(now - power.at.timestamp(), 3) if power else (
            age if n.power_watts is not None else None),
        "powerSource": power.source if power else (power_src if n.power_watts is not None
                                                   else None),
        "stale": n.metrics_stale,
    }
    return view


def _link_view(link: Any, observed_at: float | None) -> dict[str, Any]:
    view: dict[str, Any] = link.wire()
    if observed_at is not None:
        view["observedAt"] = datetime.fromtimestamp(observed_at, UTC).isoformat()
    return view


def _event_view(e: EventRow) -> dict[str, Any]:
    return {"at": _iso(e.at), "type": e.type, "message": e.message, "runId": e.run_id}


def waiting_reasons(s: Any, workflow_ids: list[str]) -> dict[str, str]:
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
                   TaskRow.state == TaskState.Ready.value, TaskRow.reason != "",
                   WorkflowRow.state.in_((WorkflowState.Pending.value,
                                          WorkflowState.Running.value)))
            .order_by(TaskRow.id)):
        out.setdefault(wid, f"task {name}: {reason}")
    return out


def workflow_summary(wf: WorkflowRow, counts: dict[str, int] | None = None,
                     waiting: str = "") -> dict[str, Any]:
    """The workflow's list entry; ``reason`` is its own, else ``waiting`` (see
    :func:`waiting_reasons`)."""
    out: dict[str, Any] = {"id": wf.id, "name": wf.name, "state": wf.state,
                           "reason": wf.reason or waiting,
           "createdAt": _iso(wf.created_at), "finishedAt": _iso(wf.finished_at)}
    if counts is not None:
        out["tasks"] = counts
    return out


def create_app(cp: ControlPlane) -> FastAPI:
    """The FastAPI application of control plane ``cp``."""
    app = FastAPI(
        title="Continuum",
        version=continuum.__version__,
        description="One control plane for the compute continuum: devices, edge, cloud, HPC. "
        "Submit workflows, register sites, watch runs and their placements.",
    )
    # Models only referenced from openapi_extra must be registered by hand.
    _schemas: dict[str, type[BaseModel]] = {"WorkflowDocument": WorkflowDocument,
                                            "SiteSpec": SiteSpec}

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, model in _schemas.items():
            js = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[name] = js
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    routes_kubernetes.add_routes(app, cp)

    @app.exception_handler(ValidationFailed)
    async def _invalid(_: Request, e: ValidationFailed) -> JSONResponse:
        return JSONResponse({"detail": [p.as_dict() for p in e.problems]}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, e: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, e: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    async def _body(request: Request) -> bytes:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ValidationFailed([Problem(["body"], f"the body has {len(body)} bytes; the "
                                            f"limit is {MAX_BODY_BYTES}", "body_too_large")])
        return body

    # ------------------------------------------------------------ workflows

    @app.post("/v1/workflows", status_code=201, tags=["workflows"], openapi_extra=_DOC_BODY,
              summary="Submit a workflow (JSON or YAML)")
    async def submit_workflow(request: Request) -> JSONResponse:
        """Validate, store and start a Workflow document.

        Send ``Content-Type: application/yaml`` for YAML. A 422 lists every problem:
        schema errors, duplicate or unknown task names, dependency cycles, inputs no
        task produces, and tasks no node could ever hold.
        """
        doc = parse_document(await _body(request), request.headers.get("content-type"))
        wf = await run_in_threadpool(cp.submit, doc)
        return JSONResponse(workflow_summary(wf), status_code=201,
                            headers={"Location": f"/v1/workflows/{wf.id}"})

    @app.get("/v1/workflows", tags=["workflows"], summary="List workflows")
    def list_workflows(state: WorkflowState | None = None,
                       limit: int = Query(50, ge=1, le=500),
                       offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """Newest first; filter by ``state``; paginate with ``limit`` and ``offset``."""
        with cp.store.session() as s:
            q = select(WorkflowRow)
            cq = select(func.count()).select_from(WorkflowRow)
            if state is not None:
                q = q.where(WorkflowRow.state == state.value)
                cq = cq.where(WorkflowRow.state == state.value)
            total = s.scalar(cq) or 0
            rows = s.scalars(q.order_by(WorkflowRow.created_at.desc()).limit(limit)
                             .offset(offset)).all()
            counts: dict[str, dict[str, int]] = {r.id: {} for r in rows}
            if rows:
                for wid, st, n in s.execute(
                        select(TaskRow.workflow_id, TaskRow.state, func.count())
                        .where(TaskRow.workflow_id.in_(list(counts)))
                        .group_by(TaskRow.workflow_id, TaskRow.state)):
                    counts[wid][st] = n
            waiting = waiting_reasons(s, list(counts))
            return {"items": [workflow_summary(r, counts[r.id], waiting.get(r.id, ""))
                              for r in rows],
                    "total": total, "limit": limit, "offset": offset}

    @app.get("/v1/workflows/{workflow_id}", tags=["workflows"], summary="A workflow in full")
    def get_workflow(workflow_id: str) -> dict[str, Any]:
        """Tasks, runs (with placements), events and the submitted document."""
        with cp.store.session() as s:
            wf = s.get(WorkflowRow, workflow_id)
            if wf is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
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
                    "events": [_event_view(e) for e in events],
                    "document": wf.document}

    @app.delete("/v1/workflows/{workflow_id}", status_code=202, tags=["workflows"],
                summary="Cancel a workflow")
    def cancel_workflow(workflow_id: str) -> dict[str, Any]:
        """Cancels every run still placed or running, on every backend; returns 202.

        Cancelling a workflow that is already cancelled is harmless; one that succeeded
        or failed is a 409.
        """
        with cp.store.session() as s:
            wf = s.get(WorkflowRow, workflow_id)
            if wf is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            if wf.state in (WorkflowState.Succeeded.value, WorkflowState.Failed.value):
                raise Conflict(f"workflow {workflow_id} already {wf.state.lower()}; "
                               "there is nothing left to cancel")
            if wf.state not in (WorkflowState.Cancelling.value, WorkflowState.Cancelled.value):
                wf.state = WorkflowState.Cancelling.value
                add_event(s, "WorkflowCancelling", "cancellation requested", workflow_id=wf.id)
            out = workflow_summary(wf)
        cp.reconciler.wake()
        return out

    # ------------------------------------------------------------ runs

    @app.get("/v1/runs", tags=["runs"], summary="List runs")
    def list_runs(workflow: str | None = None, state: RunState | None = None,
                  limit: int = Query(100, ge=1, le=1000),
                  offset: int = Query(0, ge=0)) -> dict[str, Any]:
        with cp.store.session() as s:
            q = select(RunRow)
            if workflow:
                q = q.where(RunRow.workflow_id == workflow)
            if state:
                q = q.where(RunRow.state == state.value)
            total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
            rows = s.scalars(q.order_by(RunRow.created_at.desc()).limit(limit)
                             .offset(offset)).all()
            return {"items": [run_view(r, tail=False) for r in rows], "total": total,
                    "limit": limit, "offset": offset}

    @app.get("/v1/runs/{run_id}", tags=["runs"], summary="A run with its placement explanation")
    def get_run(run_id: str, tail: int = Query(50, ge=0, le=1000)) -> dict[str, Any]:
        """The run, its placement (per-plugin scores, predictions), observed figures,
        its events and the last ``tail`` lines of its output."""
        with cp.store.session() as s:
            r = s.get(RunRow, run_id)
            if r is None:
                raise NotFound(f"run {run_id!r} does not exist")
            view = run_view(r)
            view["events"] = [_event_view(e) for e in s.scalars(
                select(EventRow).where(EventRow.run_id == run_id).order_by(EventRow.id))]
        if r.state in (RunState.Dispatched.value, RunState.Running.value) and r.handle:
            view["outputTail"] = cp.live_logs(r, tail) or view["outputTail"]
        if tail and view["outputTail"]:
            view["outputTail"] = "\n".join(view["outputTail"].splitlines()[-tail:])
        return view

    # ------------------------------------------------------------ artifacts

    @app.put("/v1/artifacts/{workflow_id}/{name:path}", status_code=201, tags=["artifacts"],
             summary="Upload an output (raw body)")
    async def put_artifact(workflow_id: str, name: str, request: Request,
                           run: str | None = None) -> dict[str, Any]:
        """Agents upload a run's declared output here; ``run`` names the producing run."""
        try:
            check_name(name)
        except ValueError as e:
            raise ValidationFailed([Problem(["path", "name"], str(e), "bad_name")]) from e
        node = await run_in_threadpool(cp.check_upload, workflow_id, name, run)
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            async for chunk in request.stream():
                spool.write(chunk)
            spool.seek(0)
            rec = await run_in_threadpool(
                cp.artifacts.put_stream, workflow_id, name,
                iter(lambda: spool.read(1 << 20), b""), run_id=run, node=node)
        return {"name": rec.name, "sha256": rec.sha256, "size": rec.size}

    @app.get("/v1/artifacts/{workflow_id}/{name:path}", tags=["artifacts"],
             summary="Download an artifact", response_class=FileResponse)
    def get_artifact(workflow_id: str, name: str) -> FileResponse:
        path = cp.artifacts.path(workflow_id, name)
        rec = cp.artifacts.record(workflow_id, name)
        if path is None or rec is None:
            raise NotFound(f"workflow {workflow_id!r} has no artifact {name!r} (yet)")
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"X-Content-SHA256": rec.sha256,
                                     "X-Continuum-Simulated": str(rec.simulated).lower()})

    # ------------------------------------------------------------ sites, nodes, devices

    @app.post("/v1/sites", status_code=201, tags=["sites"], openapi_extra=_SITE_BODY,
              summary="Register a site (JSON or YAML)")
    async def register_site(request: Request) -> JSONResponse:
        """Registers and checks a site; a 422 says why it could not be reached or used.

        ``monitoring`` (optional) says how its ``prometheusUrl`` is read: catalog
        overrides, node ↔ instance map, stale bound (see docs/monitoring.md)."""
        data = parse_body(await _body(request), request.headers.get("content-type"))
        try:
            spec = SiteSpec.model_validate(data)
        except ValidationError as e:
            raise ValidationFailed(pydantic_problems(e)) from e
        if problems := monitoring_problems(spec.monitoring):
            raise ValidationFailed([Problem(loc, msg, "unknown_name") for loc, msg in problems])
        try:
            rt = await run_in_threadpool(cp.federation.register, spec)
        except AdapterError as e:
            field = e.details.get("field")  # the config key at fault, when the adapter knows
            raise ValidationFailed([Problem(["config", *str(field).split(".")] if field
                                            else ["config"], e.message,
                                            type(e).__name__)]) from e
        cp.reconciler.wake()
        cp.collector.wake()
        return JSONResponse(rt.summary(), status_code=201,
                            headers={"Location": f"/v1/sites/{spec.name}"})

    @app.get("/v1/sites", tags=["sites"], summary="List sites with their health")
    def list_sites() -> dict[str, Any]:
        return {"items": [rt.summary() for rt in cp.federation.sites()]}

    @app.get("/v1/sites/{name}", tags=["sites"], summary="One site")
    def get_site(name: str) -> dict[str, Any]:
        """The site with its health; ``prometheus`` shows the collector's view of it."""
        out = cp.federation.site(name).summary()
        prom = cp.collector.status(name)
        if prom is not None:
            out["prometheus"] = prom
        return out

    @app.get("/v1/nodes", tags=["nodes"], summary="List nodes")
    def list_nodes(site: str | None = None, tier: Tier | None = None) -> dict[str, Any]:
        nodes = [n for n in cp.federation.nodes()
                 if (site is None or n.site == site) and (tier is None or n.tier == tier)]
        now = time.time()
        return {"items": [node_view(n, now) for n in nodes]}

    @app.get("/v1/nodes/{node_id:path}", tags=["nodes"], summary="One node")
    def get_node(node_id: str) -> dict[str, Any]:
        n = cp.federation.node(node_id)
        if n is None:
            raise NotFound(f"node {node_id!r} is not in the inventory (ids are site/name)")
        return node_view(n, time.time())

    @app.get("/v1/devices", tags=["nodes"], summary="List devices (agents) of every fleet")
    def list_devices() -> dict[str, Any]:
        return {"items": cp.devices()}

    @app.get("/v1/topology", tags=["nodes"], summary="RTT and bandwidth between locations")
    def topology() -> dict[str, Any]:
        """Every pair of known locations: RTT (ms), bandwidth (bit/s) and ``source``
        (measured by agents or blackbox probes, configured, or modelled from distance);
        measured links also carry ``observedAt``."""
        return {"links": [_link_view(link, cp.network.observed_at(link.a, link.b))
                          for link in cp.network.links()]}

    # ------------------------------------------------------------ health and metrics

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The store answers and the loop runs")
    def readyz() -> JSONResponse:
        try:
            cp.store.ping()
        except Exception as e:
            return JSONResponse({"detail": f"store unreachable: {e}"}, status_code=503)
        last = cp.reconciler.last_cycle_at
        limit = max(10.0, 10 * cp.settings.reconcile_interval_s)
        if last is None or time.time() - last > limit:
            return JSONResponse({"detail": "the reconcile loop has not completed a cycle in "
                                           f"the last {limit:.0f}s"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    def metrics() -> Response:
        last = cp.reconciler.last_cycle_at
        if last is not None:
            cp.metrics.reconcile_lag.set(max(0.0, time.time() - last))
        return Response(cp.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    routes_sites.add_routes(app, cp)
    routes_devices.add_routes(app, cp)
    routes_models.add_routes(app, cp)
    return app


__all__ = ["create_app", "run_view", "workflow_summary", "TaskState"]
