"""The REST API (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

:func:`create_app` assembles one :class:`fastapi.APIRouter` per resource — workflows
(:mod:`~control_plane.routes_workflows`), runs, artifacts, sites, nodes/devices/topology,
KubeEdge data sources, models and previews, health and metrics — each of which gets the
narrow services it uses through FastAPI dependencies (:mod:`control_plane.deps`).
Every route's access rule is in :data:`control_plane.access.ROUTE_RULES`, applied by the
app-wide dependency :func:`control_plane.access.enforce`; every mutating call is
recorded by :class:`control_plane.audit.AuditMiddleware`.

Errors share one shape: ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``
for 422 (each problem naming its field and the fix) and for 413 (a body over its route's
limit, type ``body_too_large``, counted while it streams in: see
:mod:`control_plane.input_limits`), and ``{"detail": "..."}`` for 401, 403, 404, 409,
429, 502 and 503 (a submit refused because the backlog of tasks waiting to be placed is
over ``submit_max_backlog_tasks`` is a 429 with ``Retry-After`` and ``"reason":
"backlog"``). A request that needs the leader's loop (site removal) answered by a
follower replica is redirected to the leader (307, ``Location`` on the leader's API URL),
or refused with 503 and ``Retry-After`` while no leader is elected.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

import continuum
from continuum.errors import Conflict, NotFound, ValidationFailed
from continuum.model import SiteSpec, TaskState, WorkflowDocument
from control_plane import (
    routes_artifacts,
    routes_audit,
    routes_devices,
    routes_health,
    routes_kubernetes,
    routes_models,
    routes_nodes,
    routes_runs,
    routes_sites,
    routes_tokens,
    routes_workflows,
)
from control_plane.access import enforce
from control_plane.audit import AuditMiddleware
from control_plane.deps import Services
from control_plane.input_limits import BodyLimit
from control_plane.leader import NotLeader
from control_plane.routes_common import MAX_BODY_BYTES
from control_plane.routes_nodes import node_view
from control_plane.routes_runs import run_view
from control_plane.routes_workflows import workflow_summary
from control_plane.workflows import Backlogged


def create_app(services: Services) -> FastAPI:
    """The FastAPI application serving ``services`` (kept on ``app.state.services``)."""
    app = FastAPI(
        title="Continuum",
        version=continuum.__version__,
        description="One control plane for the compute continuum: devices, edge, cloud, HPC. "
        "Submit workflows, register sites, watch runs and their placements. "
        "Send `Authorization: Bearer TOKEN` (see docs/security.md).",
        dependencies=[Depends(enforce)],
    )
    app.state.services = services
    # the last added is the outermost: every mutating call is audited, a 413 included
    app.add_middleware(BodyLimit, settings=services.settings)
    app.add_middleware(AuditMiddleware, store=services.store)
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

    @app.exception_handler(ValidationFailed)
    async def _invalid(_: Request, e: ValidationFailed) -> JSONResponse:
        return JSONResponse({"detail": [p.as_dict() for p in e.problems]}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, e: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(NotLeader)
    async def _not_leader(request: Request, e: NotLeader) -> Response:
        # a request that needs the leader's loop, answered by a follower
        if e.leader is not None and e.leader.api_url:
            url = e.leader.api_url.rstrip("/") + request.url.path
            if request.url.query:
                url += "?" + request.url.query
            return Response(status_code=307, headers={"Location": url})
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(Backlogged)
    async def _backlogged(_: Request, e: Backlogged) -> JSONResponse:
        services.metrics.submits_refused.labels("backlog").inc()
        return JSONResponse({"detail": str(e), "reason": "backlog", "backlogTasks": e.backlog,
                             "maxBacklogTasks": e.bound}, status_code=429,
                            headers={"Retry-After": str(e.retry_after_s)})

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, e: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=409)

    for module in (routes_kubernetes, routes_workflows, routes_runs, routes_artifacts,
                   routes_sites, routes_nodes, routes_devices, routes_health, routes_models, routes_tokens,
                   routes_audit):
        app.include_router(module.router)
    return app


__all__ = ["MAX_BODY_BYTES", "create_app", "node_view", "run_view", "workflow_summary",
           "TaskState"]
