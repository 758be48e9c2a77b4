"""What the API routers share: the body limit, OpenAPI bodies, time formatting and the
dependency aliases (``StoreDep`` = a :class:`~control_plane.store.Store` parameter
filled by :func:`control_plane.deps.get_store`, and so on)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Select

from control_plane import deps
from control_plane.artifacts import LocalArtifactStore
from control_plane.auth import Principal, authenticate_async
from control_plane.enrollment import Enrollment
from control_plane.federation import Federation
from control_plane.models import ModelService
from control_plane.settings import Settings
from control_plane.store import Store, WorkflowRow
from control_plane.workflows import WorkflowService
from monitoring.collector import Collector
from monitoring.metrics import ControlPlaneMetrics
from monitoring.topology import TopologyModel

MAX_BODY_BYTES = 1 << 20
"""Default of the ``max_body_bytes`` setting: largest workflow or site document (bytes)."""
MAX_OFFSET = 10**9
"""Largest ``offset`` of a list route: a larger one is a 422, not an SQL integer overflow."""

SettingsDep = Annotated[Settings, Depends(deps.get_settings)]
StoreDep = Annotated[Store, Depends(deps.get_store)]
FederationDep = Annotated[Federation, Depends(deps.get_federation)]
ArtifactsDep = Annotated[LocalArtifactStore, Depends(deps.get_artifacts)]
CollectorDep = Annotated[Collector, Depends(deps.get_collector)]
NetworkDep = Annotated[TopologyModel, Depends(deps.get_network)]
MetricsDep = Annotated[ControlPlaneMetrics, Depends(deps.get_metrics)]
ModelsDep = Annotated[ModelService, Depends(deps.get_models)]
WorkflowsDep = Annotated[WorkflowService, Depends(deps.get_workflows)]
LoopDep = Annotated[deps.Loop, Depends(deps.get_loop)]
DevicesDep = Annotated[deps.DeviceListing, Depends(deps.get_devices)]
EnrollmentDep = Annotated[Enrollment, Depends(deps.get_enrollment)]
PrincipalDep = Annotated[Principal, Depends(authenticate_async)]


def in_tenants(q: Select[Any], principal: Principal) -> Select[Any]:
    """``q`` (over a query that has :class:`WorkflowRow` in it) narrowed to the caller's
    tenants; unchanged for an admin."""
    return q if principal.is_admin else q.where(WorkflowRow.tenant.in_(principal.tenants))


def body_of(schema: str) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is the named schema, in JSON or YAML."""
    ref = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    return {"requestBody": {"required": True, "content": {"application/json": ref,
                                                           "application/yaml": ref}}}


async def read_body(request: Request) -> bytes:
    """The request body, at most ``max_body_bytes`` long.

    Raises:
        control_plane.input_limits.BodyTooLarge: longer (a 413, raised while it streams
            in by the :class:`~control_plane.input_limits.BodyLimit` middleware).
    """
    return await request.body()


class FastJSONResponse(JSONResponse):
    """A JSON answer encoded with orjson (several times faster than ``json``); for
    content of plain JSON types with string keys (an API view, not arbitrary data)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def iso(dt: Any) -> str | None:
    return dt.isoformat() if dt is not None else None
