"""Site routes: register, list, read, drain, resume and remove a site.

* ``POST /v1/sites`` — register (and check) a site.
* ``POST /v1/sites/{name}/drain`` — no new work goes to the site; running work goes on.
* ``POST /v1/sites/{name}/resume`` — the site takes new work again.
* ``DELETE /v1/sites/{name}?runs=cancel|leave`` — forget the site. With ``runs=cancel``
  (default) every run dispatched there is cancelled on the backend first (a Slurm job
  is ``DELETE``d); with ``runs=leave`` the backend's work is left running, untracked.
  Either way the runs end as Failed ("site was removed") at the next reconcile cycle
  and their tasks are retried elsewhere, as with any failed run.

Removal is carried out by the reconciler (the only code that cancels runs on a
backend): the handler hands it a :class:`~control_plane.decide.RemoveSite` action and
waits for the result.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from continuum.errors import AdapterError, Problem, ValidationFailed
from continuum.model import SiteSpec
from control_plane.actions import RemoveSite
from control_plane.deps import Loop
from control_plane.federation import Federation
from control_plane.routes_common import (
    CollectorDep,
    FederationDep,
    LoopDep,
    SettingsDep,
    body_of,
    read_body,
)
from control_plane.validation import parse_body, pydantic_problems
from monitoring.catalog import monitoring_problems

router = APIRouter(tags=["sites"])


class RunsOnRemove(StrEnum):
    """What happens to a removed site's running work."""

    cancel = "cancel"
    leave = "leave"


@router.post("/v1/sites", status_code=201, openapi_extra=body_of("SiteSpec"),
             summary="Register a site (JSON or YAML)")
async def register_site(request: Request, federation: FederationDep, loop: LoopDep,
                        collector: CollectorDep) -> JSONResponse:
    """Registers and checks a site; a 422 says why it could not be reached or used.

    ``monitoring`` (optional) says how its ``prometheusUrl`` is read: catalog
    overrides, node ↔ instance map, stale bound (see docs/monitoring.md)."""
    data = parse_body(await read_body(request), request.headers.get("content-type"))
    try:
        spec = SiteSpec.model_validate(data)
    except ValidationError as e:
        raise ValidationFailed(pydantic_problems(e)) from e
    if problems := monitoring_problems(spec.monitoring):
        raise ValidationFailed([Problem(loc, msg, "unknown_name") for loc, msg in problems])
    try:
        rt = await run_in_threadpool(federation.register, spec)
    except AdapterError as e:
        field = e.details.get("field")  # the config key at fault, when the adapter knows
        raise ValidationFailed([Problem(["config", *str(field).split(".")] if field
                                        else ["config"], e.message,
                                        type(e).__name__)]) from e
    loop.wake()
    collector.wake()
    return JSONResponse(rt.summary(), status_code=201,
                        headers={"Location": f"/v1/sites/{spec.name}"})


@router.get("/v1/sites", summary="List sites with their health")
def list_sites(federation: FederationDep) -> dict[str, Any]:
    return {"items": [rt.summary() for rt in federation.sites()]}


@router.get("/v1/sites/{name}", summary="One site")
def get_site(name: str, federation: FederationDep, collector: CollectorDep) -> dict[str, Any]:
    """The site with its health; ``prometheus`` shows the collector's view of it."""
    out = federation.site(name).summary()
    prom = collector.status(name)
    if prom is not None:
        out["prometheus"] = prom
    return out


@router.post("/v1/sites/{name}/drain", summary="Drain a site (no new work)")
def drain_site(name: str, federation: FederationDep) -> dict[str, Any]:
    """New runs are no longer placed on the site; running ones go on. Health: Draining."""
    return federation.drain(name, True).summary()


@router.post("/v1/sites/{name}/resume", summary="Resume a drained site")
def resume_site(name: str, federation: FederationDep, loop: LoopDep) -> dict[str, Any]:
    rt = federation.drain(name, False)
    loop.wake()
    return rt.summary()


def remove_site(federation: Federation, loop: Loop, name: str, runs: RunsOnRemove,
                timeout_s: float) -> dict[str, Any]:
    """Have the reconciler cancel (or leave) the site's active runs and remove the site.

    Returns ``{"site": name, "runs": mode, "cancelled": [...], "left": [...]}`` (run ids).

    Raises:
        NotFound: no such site.
        HTTPException 502: the backend refused to cancel a run (nothing was removed).
        HTTPException 503: the reconciler did not carry it out within ``timeout_s``.
    """
    federation.site(name)  # NotFound before anything is asked
    fut = loop.request(RemoveSite(name, cancel_runs=runs == RunsOnRemove.cancel))
    try:
        result: dict[str, Any] = fut.result(timeout=timeout_s)
    except FutureTimeout as e:
        fut.cancel()
        raise HTTPException(503, f"site {name!r} not removed: the reconcile loop did not "
                                 f"get to it within {timeout_s:.0f}s; retry") from e
    except AdapterError as e:
        raise HTTPException(502, f"site {name!r} not removed: {e.message}. Retry, or remove "
                                 "with runs=leave") from e
    return result


@router.delete("/v1/sites/{name}", summary="Remove a site")
async def delete_site(name: str, federation: FederationDep, loop: LoopDep,
                      settings: SettingsDep, runs: Annotated[RunsOnRemove, Query(
        description="cancel: cancel the site's running work first; leave: leave it "
        "running on the backend, untracked")] = RunsOnRemove.cancel) -> dict[str, Any]:
    """Removes the site; its runs end as Failed and their tasks are retried elsewhere."""
    timeout_s = max(60.0, 10 * settings.reconcile_interval_s)
    return await run_in_threadpool(remove_site, federation, loop, name, runs, timeout_s)


__all__ = ["RunsOnRemove", "remove_site", "router"]
