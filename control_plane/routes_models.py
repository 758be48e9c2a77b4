"""Learned models and what-if placement: ``/v1/models``, ``/v1/models:retrain``,
``/v1/placements:preview``. The models themselves are served by
:class:`control_plane.models.ModelService`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from control_plane.federation import Federation
from control_plane.routes_common import FederationDep, ModelsDep, NetworkDep
from control_plane.validation import check_workflow, effective_dependencies, parse_document
from monitoring.topology import TopologyModel
from placement import DataSource, Framework, PlacementRequest, Snapshot
from placement import plan as placement_plan

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ preview


def preview(federation: Federation, network: TopologyModel, fw: Framework, body: bytes,
            content_type: str | None) -> dict[str, Any]:
    """The plan for a workflow document, without storing or running anything.

    All tasks are placed in one batch on a copy of the current snapshot (capacity
    deducted as the control plane would); an input produced by another task is
    assumed to be at that task's chosen node, with its declared ``size`` (0 if none).
    Totals: ``completionS`` along the longest dependency chain of predicted completions,
    ``energyJ`` and ``bytesMoved`` summed, ``latencyMs`` the worst SLO RTT.

    Raises:
        ValidationFailed: the document is invalid (same checks as submission).
    """
    doc = parse_document(body, content_type)
    check_workflow(doc, federation.nodes())
    deps = effective_dependencies(doc)
    snap = Snapshot(nodes=federation.placeable_nodes(draining=True), network=network,
                    now=time.time())
    datasets = {d.name: d for d in doc.spec.datasets}
    tasks = {t.name: t for t in doc.spec.tasks}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for d in deps[name]:
            visit(d)
        order.append(name)

    for t in doc.spec.tasks:
        visit(t.name)
    outputs = {o.name: (t.name, o.size or 0) for t in doc.spec.tasks for o in t.outputs}
    chosen: dict[str, str] = {}
    plan: dict[str, Any] = {}
    unplaced: dict[str, str] = {}
    # place dependency level by level so an input's location is known when it is read
    for name in order:
        task = tasks[name]
        sources = [DataSource(bytes=datasets[d].size, locations=list(datasets[d].locations))
                   for d in task.datasets]
        for ref in task.inputs:
            producer, size = outputs.get(ref.name, (None, 0))
            if producer in chosen:
                sources.append(DataSource(bytes=size, locations=[chosen[producer]],
                                          nodes=[chosen[producer]]))
        out = placement_plan([PlacementRequest(name, task, doc.spec.objective, sources)], snap,
                             fw)[0]
        if out.decision is None:
            unplaced[name] = out.reason
            continue
        chosen[name] = out.decision.node
        plan[name] = out.decision.wire()
    finish: dict[str, float] = {}
    for name in order:
        if name not in plan:
            continue
        start = max((finish.get(d, 0.0) for d in deps[name]), default=0.0)
        finish[name] = start + plan[name]["predicted"]["completionS"]
    lat = [p["predicted"].get("latencyMs") for p in plan.values()]
    return {
        "workflow": doc.metadata.name,
        "modelVersion": fw.predictor.version,
        "plan": [{"task": n, **plan[n]} for n in order if n in plan],
        "unschedulable": [{"task": n, "reason": r} for n, r in unplaced.items()],
        "predicted": {
            "completionS": round(max(finish.values(), default=0.0), 3),
            "energyJ": round(sum(p["predicted"]["energyJ"] for p in plan.values()), 3),
            "bytesMoved": int(sum(p["predicted"].get("bytesMoved", 0) for p in plan.values())),
            "latencyMs": max((x for x in lat if x is not None), default=None),
        },
    }


router = APIRouter()


@router.get("/v1/models", tags=["models"], summary="Learned predictors: versions and MAPE")
def get_models(models: ModelsDep) -> dict[str, Any]:
    return models.view()


@router.post("/v1/models:retrain", tags=["models"],
             summary="Train the predictors now (source: auto, store or twin)")
async def retrain(models: ModelsDep, source: str = Query("auto", description="auto, store or twin")
                  ) -> dict[str, Any]:
    return await run_in_threadpool(models.retrain, source)


@router.post("/v1/placements:preview", tags=["placements"],
             summary="What-if: the plan for a workflow and its predicted latency, energy "
                     "and bytes moved, without running anything")
async def preview_route(request: Request, federation: FederationDep, network: NetworkDep,
                        models: ModelsDep) -> dict[str, Any]:
    body = await request.body()
    return await run_in_threadpool(preview, federation, network, models.framework, body,
                                   request.headers.get("content-type"))


__all__ = ["preview", "router"]
