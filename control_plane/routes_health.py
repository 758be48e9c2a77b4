"""Health and metrics routes: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from control_plane.routes_common import LoopDep, MetricsDep, SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The store answers and the loop runs")
def readyz(store: StoreDep, loop: LoopDep, settings: SettingsDep) -> JSONResponse:
    """503 when the store does not answer or no reconcile cycle completed within
    ``max(10, 10 × reconcile_interval_s)`` seconds."""
    try:
        store.ping()
    except Exception as e:
        return JSONResponse({"detail": f"store unreachable: {e}"}, status_code=503)
    last = loop.last_cycle_at
    limit = max(10.0, 10 * settings.reconcile_interval_s)
    if last is None or time.time() - last > limit:
        return JSONResponse({"detail": "the reconcile loop has not completed a cycle in "
                                       f"the last {limit:.0f}s"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics")
def metrics(loop: LoopDep, m: MetricsDep) -> Response:
    last = loop.last_cycle_at
    if last is not None:
        m.reconcile_lag.set(max(0.0, time.time() - last))
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["router"]
