"""Site routes: register, list, read, drain, resume and remove a site.

* ``POST /v1/sites`` — register (and check) a site.
* ``POST /v1/sites/{name}/drain`` — no new work goes to the site; running work goes on.
* ``POST /v1/sites/{name}/resume`` — the site takes new work again.
* ``DELETE /v1/sites/{name}?runs=cancel|leave`` — forget the site. It is drained first
  (nothing new is dispatched there). With ``runs=cancel`` (default) every run dispatched
  there is cancelled on the backend — also one whose submit answer was lost — and waited
  out (a Slurm job is ``DELETE``d until slurmctld reports it ended); with ``runs=leave``
  the backend's work is left running, untracked.
  Either way the runs end as Failed ("site was removed") at the next reconcile cycle
  and their tasks are retried elsewhere, as with any failed run.

Who may: :func:`site_admin_roles` (Slurm sites: hpc-admin; Kubernetes, KubeEdge and
device sites: cluster-admin; admin always), enforced by :func:`require_site_admin`.
Secrets are uploaded as values; a path on the server is refused here (422 naming the
field, :func:`server_path_problems`) and accepted only from the operator's federation
file, which the server reads at start without this route.

Removal is carried out by the reconciler (the only code that cancels runs on a
backend): the handler hands it a :class:`~control_plane.decide.RemoveSite` action and
waits for the result.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from continuum.errors import AdapterError, NotFound, Problem, ValidationFailed
from continuum.model import SiteKind, SiteSpec
from control_plane.actions import RemoveSite
from control_plane.auth import Role, authenticate
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


def site_admin_roles(kind: SiteKind) -> tuple[Role, ...]:
    """The roles (besides ``admin``, who may do everything) that may register, drain,
    resume and remove a site of ``kind``: Slurm → ``hpc-admin``; Kubernetes, KubeEdge and
    device fleets → ``cluster-admin``; the simulator → ``admin`` only."""
    if kind == SiteKind.slurm:
        return (Role.hpc_admin,)
    if kind in (SiteKind.kubernetes, SiteKind.kubeedge, SiteKind.devices):
        return (Role.cluster_admin,)
    return (Role.admin,)


async def require_site_admin(request: Request, federation: FederationDep) -> None:
    """FastAPI dependency of the mutating site routes: the caller must hold one of
    :func:`site_admin_roles` of the site's kind (or ``admin``).

    The kind is the body's ``kind`` for ``POST /v1/sites`` (a body without a valid kind
    is left to the route's 422) and the stored site's for drain, resume and remove (an
    unknown site is left to the route's 404; any valid token may list sites anyway).

    Raises:
        HTTPException 401: no valid bearer token.
        HTTPException 403: the caller holds none of the kind's roles (the detail names them).
    """
    principal = authenticate(request)
    name = request.path_params.get("name")
    kind: SiteKind | None = None
    if name is None:
        try:
            data = parse_body(await read_body(request), request.headers.get("content-type"))
            kind = SiteKind(str(data.get("kind"))) if isinstance(data, dict) else None
        except (ValidationFailed, ValueError):
            kind = None
    else:
        try:
            kind = federation.site(name).spec.kind
        except NotFound:
            kind = None
    if kind is not None and not principal.has_any(*site_admin_roles(kind)):
        needed = " or ".join(sorted({Role.admin.value, *(r.value for r in site_admin_roles(kind))}))
        raise HTTPException(403, f"{kind.value} sites are managed by the role {needed}; "
                                 f"{principal.subject} has "
                                 + (", ".join(sorted(principal.roles)) or "no role"))


SERVER_PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "slurm": ("jwtKeyFile", "socket"),
    "kubernetes": ("kubeconfigPath", "inCluster"),
    "kubeedge": ("kubeconfigPath", "inCluster"),
}
"""Per site kind, the config keys that name files (or credentials) of the control
plane's own host: accepted from the federation file only."""


def server_path_problems(spec: SiteSpec) -> list[Problem]:
    """What in a site registered over the API would read the server's own files or
    credentials: :data:`SERVER_PATH_FIELDS`, and a devices ``tlsCa`` that is not PEM text.
    One 422 problem per field, ``loc`` ``["config", <key>]``."""
    cfg = spec.config
    out = [Problem(["config", key], f"{key} names a file (or credentials) on the control "
                   "plane's host, which only the operator's federation file may do; over the "
                   "API upload the value itself (" + _VALUE_FIELD.get(key, "") + ")",
                   "server_path")
           for key in SERVER_PATH_FIELDS.get(spec.kind.value, ()) if cfg.get(key)]
    ca = cfg.get("tlsCa")
    if spec.kind == SiteKind.devices and isinstance(ca, str) and not ca.lstrip().startswith(
            "-----BEGIN"):
        out.append(Problem(["config", "tlsCa"], "tlsCa must be the CA certificate's PEM text "
                           "(-----BEGIN CERTIFICATE-----...); a path on the control plane's "
                           "host is accepted from the federation file only", "server_path"))
    return out


_VALUE_FIELD = {"jwtKeyFile": "jwtKey: the key file's content in base64",
                "socket": "url: slurmrestd's http(s) address with jwtKey or token; over a "
                          "socket in rest_auth/local the jobs' user is not the userMap's",
                "kubeconfigPath": "kubeconfig: the file's content",
                "inCluster": "kubeconfig: a kubeconfig of a service account made for Continuum"}


class RunsOnRemove(StrEnum):
    """What happens to a removed site's running work."""

    cancel = "cancel"
    leave = "leave"


@router.post("/v1/sites", status_code=201, openapi_extra=body_of("SiteSpec"),
             summary="Register a site (JSON or YAML)", dependencies=[Depends(require_site_admin)])
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
    if path_problems := server_path_problems(spec):
        raise ValidationFailed(path_problems)
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


@router.post("/v1/sites/{name}/drain", summary="Drain a site (no new work)",
             dependencies=[Depends(require_site_admin)])
def drain_site(name: str, federation: FederationDep) -> dict[str, Any]:
    """New runs are no longer placed on the site; running ones go on. Health: Draining."""
    return federation.drain(name, True).summary()


@router.post("/v1/sites/{name}/resume", summary="Resume a drained site",
             dependencies=[Depends(require_site_admin)])
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
        HTTPException 502: the backend refused to cancel a run (the site is left
            draining, not removed).
        HTTPException 503: the reconciler did not carry it out within ``timeout_s``.
    """
    try:
        federation.site(name)  # NotFound before anything is asked
    except NotFound:  # registered through another replica since the last resync?
        federation.sync()
        federation.site(name)
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


@router.delete("/v1/sites/{name}", summary="Remove a site",
               dependencies=[Depends(require_site_admin)])
async def delete_site(name: str, federation: FederationDep, loop: LoopDep,
                      settings: SettingsDep, runs: Annotated[RunsOnRemove, Query(
        description="cancel: cancel the site's running work first; leave: leave it "
        "running on the backend, untracked")] = RunsOnRemove.cancel) -> dict[str, Any]:
    """Removes the site; its runs end as Failed and their tasks are retried elsewhere."""
    timeout_s = max(60.0, 10 * settings.reconcile_interval_s)
    return await run_in_threadpool(remove_site, federation, loop, name, runs, timeout_s)


__all__ = ["RunsOnRemove", "SERVER_PATH_FIELDS", "remove_site", "require_site_admin", "router",
           "server_path_problems", "site_admin_roles"]
