"""Site administration routes: drain, resume and remove a site.

* ``POST /v1/sites/{name}/drain`` — no new work goes to the site; running work goes on.
* ``POST /v1/sites/{name}/resume`` — the site takes new work again.
* ``DELETE /v1/sites/{name}?runs=cancel|leave`` — forget the site. With ``runs=cancel``
  (default) every run dispatched there is cancelled on the backend first (a Slurm job
  is ``DELETE``d); with ``runs=leave`` the backend's work is left running, untracked.
  Either way the runs end as Failed ("site was removed") at the next reconcile cycle
  and their tasks are retried elsewhere, as with any failed run.

Registration itself is ``POST /v1/sites`` in :mod:`control_plane.api`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from adapters.base import Handle
from continuum.errors import AdapterError
from continuum.model import RunState
from control_plane.store import RunRow, add_event

if TYPE_CHECKING:
    from control_plane.server import ControlPlane


class RunsOnRemove(StrEnum):
    """What happens to a removed site's running work."""

    cancel = "cancel"
    leave = "leave"


_ACTIVE = (RunState.Placed.value, RunState.Dispatched.value, RunState.Running.value)


def remove_site(cp: ControlPlane, name: str, runs: RunsOnRemove) -> dict[str, Any]:
    """Cancel (or leave) the site's active runs, then remove the site.

    Returns ``{"site": name, "runs": mode, "cancelled": [...], "left": [...]}`` (run ids).

    Raises:
        NotFound: no such site.
        HTTPException 502: the backend refused to cancel a run (nothing was removed).
    """
    rt = cp.federation.site(name)
    with cp.store.session() as s:
        active = [(r.id, r.workflow_id, r.handle) for r in s.scalars(
            select(RunRow).where(RunRow.site == name, RunRow.state.in_(_ACTIVE)))]
    cancelled: list[str] = []
    left: list[str] = []
    for run_id, _, handle in active:
        if not handle:
            continue
        if runs == RunsOnRemove.leave:
            left.append(run_id)
            continue
        try:
            rt.adapter.cancel(Handle.from_json(handle))
        except AdapterError as e:
            raise HTTPException(502, f"site {name!r} not removed: cancelling run {run_id} failed: "
                                     f"{e}. Retry, or remove with runs=leave") from e
        cancelled.append(run_id)
    cp.federation.remove(name)
    with cp.store.session() as s:
        for run_id, workflow_id, _ in active:
            what = ("its backend work was cancelled" if run_id in cancelled else
                    "its backend work was left running, untracked" if run_id in left else
                    "it was not dispatched yet")
            add_event(s, "SiteRemoved", f"site {name} was removed; {what}",
                      workflow_id=workflow_id, run_id=run_id)
    cp.reconciler.wake()
    return {"site": name, "runs": runs.value, "cancelled": cancelled, "left": left}


def add_routes(app: FastAPI, cp: ControlPlane) -> None:
    """Register the site administration routes on ``app``."""

    @app.post("/v1/sites/{name}/drain", tags=["sites"], summary="Drain a site (no new work)")
    def drain_site(name: str) -> dict[str, Any]:
        """New runs are no longer placed on the site; running ones go on. Health: Draining."""
        rt = cp.federation.drain(name, True)
        return rt.summary()

    @app.post("/v1/sites/{name}/resume", tags=["sites"], summary="Resume a drained site")
    def resume_site(name: str) -> dict[str, Any]:
        rt = cp.federation.drain(name, False)
        cp.reconciler.wake()
        return rt.summary()

    @app.delete("/v1/sites/{name}", tags=["sites"], summary="Remove a site")
    async def delete_site(name: str, runs: Annotated[RunsOnRemove, Query(
            description="cancel: cancel the site's running work first; leave: leave it "
            "running on the backend, untracked")] = RunsOnRemove.cancel) -> dict[str, Any]:
        """Removes the site; its runs end as Failed and their tasks are retried elsewhere."""
        return await run_in_threadpool(remove_site, cp, name, runs)
