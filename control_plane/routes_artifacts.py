"""Artifact routes: upload a run's output, download an artifact (``/v1/artifacts``).

* ``PUT /v1/artifacts/{workflow}/{name}?run=RUN&cap=TOKEN`` (raw body) — only with the
  write capability handed to run ``RUN`` at dispatch, for one of its declared outputs
  (:mod:`control_plane.artifact_access`). 401: no capability; 403: it does not open this
  artifact (another run's, another name, forged, expired) or ``name`` is not an output of
  the run; 404: no such workflow or run; 409: the workflow or run ended, or a run that
  succeeded produced it already (outputs are immutable); 413: over ``artifact_max_bytes``
  or the tenant's ``tenant_artifact_quota_bytes`` (counted while the body streams in).
* ``GET /v1/artifacts/{workflow}/{name}`` — with a read capability (``?run=&cap=``, minted
  only for the run's declared inputs), or as a caller :func:`may_read_workflow` admits.
  401/403 as above; 404: no such artifact.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from continuum.errors import NotFound, Problem, ValidationFailed
from control_plane.artifact_access import ArtifactCapabilities, CapabilityRefused, Mode
from control_plane.artifacts import Quota, QuotaExceeded, check_name
from control_plane.auth import authenticate
from control_plane.routes_common import ArtifactsDep, SettingsDep, StoreDep, WorkflowsDep
from control_plane.store import Store, WorkflowRow

router = APIRouter(tags=["artifacts"])


def may_read_workflow(request: Request, store: Store, workflow_id: str) -> None:
    """Check that the caller of ``request`` (presenting no run capability) may read the
    artifacts of workflow ``workflow_id``: its API token is valid and the workflow is of a
    tenant it sees (docs/security.md, "API identity and tenants").

    Raises:
        HTTPException 401: no bearer token, or an invalid one.
        NotFound: no such workflow, or one outside the caller's tenants (the same answer,
            so other tenants' ids are not revealed).
    """
    principal = authenticate(request)
    with store.session() as s:
        wf = s.get(WorkflowRow, workflow_id)
        if wf is None or not principal.can_see(wf.tenant):
            raise NotFound(f"workflow {workflow_id!r} does not exist")


def get_capabilities(request: Request, settings: SettingsDep) -> ArtifactCapabilities:
    """The app's :class:`ArtifactCapabilities` (the key is read once, then kept)."""
    caps: ArtifactCapabilities | None = getattr(request.app.state, "artifact_capabilities", None)
    if caps is None:
        caps = ArtifactCapabilities.for_state_dir(settings.state_dir,
                                                  settings.artifact_capability_ttl_s)
        request.app.state.artifact_capabilities = caps
    return caps


CapabilitiesDep = Annotated[ArtifactCapabilities, Depends(get_capabilities)]


def _check_capability(caps: ArtifactCapabilities, workflow_id: str, name: str, mode: Mode,
                      run: str | None, cap: str | None) -> None:
    if not run or not cap:
        verb = "an upload" if mode == Mode.write else "this read"
        raise HTTPException(401, f"{verb} needs the run's {mode.value} capability: use the "
                                 "URL the run was handed (…?run=RUN&cap=TOKEN)",
                            headers={"WWW-Authenticate": 'Bearer realm="continuum"'})
    try:
        caps.check(cap, workflow_id, run, name, mode)
    except CapabilityRefused as e:
        raise HTTPException(403, f"cap: {e}") from e


@router.put("/v1/artifacts/{workflow_id}/{name:path}", status_code=201,
            summary="Upload a run's output (raw body; needs the run's write capability)")
async def put_artifact(workflow_id: str, name: str, request: Request, workflows: WorkflowsDep,
                       artifacts: ArtifactsDep, settings: SettingsDep, caps: CapabilitiesDep,
                       run: str | None = None, cap: str | None = None) -> dict[str, Any]:
    """Agents and batch jobs PUT each declared output to the URL they were handed;
    ``run`` names the producing run, ``cap`` is its write capability."""
    try:
        check_name(name)
    except ValueError as e:
        raise ValidationFailed([Problem(["path", "name"], str(e), "bad_name")]) from e
    _check_capability(caps, workflow_id, name, Mode.write, run, cap)
    assert run is not None
    try:
        node = await run_in_threadpool(workflows.check_upload, workflow_id, name, run)
    except CapabilityRefused as e:
        raise HTTPException(403, str(e)) from e
    quota = Quota(settings.artifact_max_bytes, settings.tenant_artifact_quota_bytes)
    upload = await run_in_threadpool(artifacts.begin, workflow_id, name, quota)
    try:
        async for chunk in request.stream():
            upload.write(chunk)
    except QuotaExceeded as e:
        raise HTTPException(413, str(e)) from e
    except BaseException:
        upload.abort()
        raise
    try:
        rec = await run_in_threadpool(
            lambda: upload.commit(run_id=run, node=node,
                                  check=lambda: workflows.check_upload(workflow_id, name, run)))
    except CapabilityRefused as e:
        raise HTTPException(403, str(e)) from e
    return {"name": rec.name, "sha256": rec.sha256, "size": rec.size}


@router.get("/v1/artifacts/{workflow_id}/{name:path}", summary="Download an artifact",
            response_class=FileResponse)
def get_artifact(workflow_id: str, name: str, request: Request, artifacts: ArtifactsDep,
                 store: StoreDep, caps: CapabilitiesDep, run: str | None = None,
                 cap: str | None = None) -> FileResponse:
    """With ``run`` and ``cap`` (a consuming run's read capability), or as a caller
    :func:`may_read_workflow` admits."""
    if run is not None or cap is not None:
        _check_capability(caps, workflow_id, name, Mode.read, run, cap)
    else:
        may_read_workflow(request, store, workflow_id)
    path = artifacts.path(workflow_id, name)
    rec = artifacts.record(workflow_id, name)
    if path is None or rec is None:
        raise NotFound(f"workflow {workflow_id!r} has no artifact {name!r} (yet)")
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"X-Content-SHA256": rec.sha256,
                                 "X-Continuum-Simulated": str(rec.simulated).lower()})


__all__ = ["get_capabilities", "may_read_workflow", "router"]
