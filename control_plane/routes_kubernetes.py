"""Routes of the Kubernetes/KubeEdge area: KubeEdge Device objects as data sources.

``GET /v1/data-sources`` lists every Device of every ``kubeedge`` site (from each
site's last inventory): its model, protocol, the node it is bound to (a Continuum node
id), that node's location and whether it is online. A task runs next to a device with
``constraints.labels: {"device.continuum.io/<device>": "true"}``, or reads its data in
place by naming the node (or location) in a Dataset's ``locations``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from adapters.capabilities import DataSourceCatalog
from continuum.model import SiteKind
from control_plane.routes_common import FederationDep

router = APIRouter(tags=["nodes"])


@router.get("/v1/data-sources", summary="KubeEdge devices (data sources) of every kubeedge site")
def list_data_sources(federation: FederationDep, site: str | None = None) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for rt in federation.sites():
        if rt.spec.kind != SiteKind.kubeedge or (site is not None and rt.spec.name != site):
            continue
        if isinstance(rt.adapter, DataSourceCatalog):
            items += [{"site": rt.spec.name, **d} for d in rt.adapter.data_sources()]
    return {"items": items}
