"""Health and metrics routes: ``/healthz``, ``/readyz``, ``/leaderz``, ``/metrics``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from control_plane.routes_common import LoopDep, MetricsDep, SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/leaderz", summary="This replica's role and the current leader")
def leaderz(loop: LoopDep) -> dict[str, Any]:
    """``{"role": "leader"|"follower", "replica": id, "epoch": n|null, "leader":
    {"replica", "epoch", "apiUrl"}|null}`` (docs/architecture.md "Replicas and the
    leader"); ``leader`` is the lease row as stored (its holder may have just died)."""
    return loop.leader_state()


@router.get("/readyz", summary="The store answers and, on the leader, the loop runs")
def readyz(store: StoreDep, loop: LoopDep, settings: SettingsDep) -> JSONResponse:
    """503 when the store does not answer or, on the leader, no reconcile cycle completed
    within ``max(10, 10 × reconcile_interval_s)`` seconds. A follower serving the API is
    ready."""
    try:
        store.ping()
    except Exception as e:
        return JSONResponse({"detail": f"store unreachable: {e}"}, status_code=503)
    if not loop.leading:
        return JSONResponse({"status": "ready", "role": "follower"})
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
