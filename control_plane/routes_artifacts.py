"""Artifact routes: upload a run's output, download an artifact (``/v1/artifacts``)."""

from __future__ import annotations

import tempfile
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from continuum.errors import NotFound, Problem, ValidationFailed
from control_plane.artifacts import check_name
from control_plane.routes_common import ArtifactsDep, WorkflowsDep

router = APIRouter(tags=["artifacts"])


@router.put("/v1/artifacts/{workflow_id}/{name:path}", status_code=201,
            summary="Upload an output (raw body)")
async def put_artifact(workflow_id: str, name: str, request: Request, workflows: WorkflowsDep,
                       artifacts: ArtifactsDep, run: str | None = None) -> dict[str, Any]:
    """Agents upload a run's declared output here; ``run`` names the producing run."""
    try:
        check_name(name)
    except ValueError as e:
        raise ValidationFailed([Problem(["path", "name"], str(e), "bad_name")]) from e
    node = await run_in_threadpool(workflows.check_upload, workflow_id, name, run)
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        spool.seek(0)
        rec = await run_in_threadpool(
            artifacts.put_stream, workflow_id, name,
            iter(lambda: spool.read(1 << 20), b""), run_id=run, node=node)
    return {"name": rec.name, "sha256": rec.sha256, "size": rec.size}


@router.get("/v1/artifacts/{workflow_id}/{name:path}", summary="Download an artifact",
            response_class=FileResponse)
def get_artifact(workflow_id: str, name: str, artifacts: ArtifactsDep) -> FileResponse:
    path = artifacts.path(workflow_id, name)
    rec = artifacts.record(workflow_id, name)
    if path is None or rec is None:
        raise NotFound(f"workflow {workflow_id!r} has no artifact {name!r} (yet)")
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"X-Content-SHA256": rec.sha256,
                                 "X-Continuum-Simulated": str(rec.simulated).lower()})


__all__ = ["router"]
