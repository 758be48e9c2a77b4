"""Device administration: forget a device that left a ``devices`` site for good.

* ``DELETE /v1/devices/{site}/{device_id}`` — the devices adapter clears the device's
  retained ``hello`` and ``status`` on the broker and drops it from the inventory, so a
  silent device no longer keeps its site Degraded. 404: no such site or device (or the
  site is not a ``devices`` site); 409: the device is online, or runs submitted to it
  have not ended; 503: the broker is not connected.

Listing is ``GET /v1/devices`` in :mod:`control_plane.routes_nodes`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from adapters.capabilities import DeviceFleet
from continuum.errors import NotFound, TransientError
from control_plane.deps import Loop
from control_plane.federation import Federation
from control_plane.routes_common import FederationDep, LoopDep

router = APIRouter(tags=["nodes"])


def forget_device(federation: Federation, loop: Loop, site: str,
                  device_id: str) -> dict[str, Any]:
    """Forget ``device_id`` of ``site``; the site's inventory and health are refreshed at
    the next reconcile cycle (woken now).

    Returns ``{"site": site, "deviceId": device_id, "forgotten": true, "health": ...,
    "message": ...}``, the health being the adapter's own view after the forget.

    Raises:
        NotFound: no such site, not a devices site, or no such device.
        Conflict: the device is online or has runs that have not ended.
        HTTPException 503: the broker is not connected.
    """
    rt = federation.site(site)
    if not isinstance(rt.adapter, DeviceFleet):
        raise NotFound(f"site {site!r} is a {rt.spec.kind.value} site; only devices sites "
                       "have devices")
    try:
        rt.adapter.forget(device_id)
    except TransientError as e:
        raise HTTPException(503, str(e)) from e
    rt.inventory_at = 0.0  # take the site's inventory again at the next cycle
    loop.wake()
    health, message = rt.adapter.health()
    return {"site": site, "deviceId": device_id, "forgotten": True,
            "health": health.value, "message": message}


@router.delete("/v1/devices/{site}/{device_id}",
               summary="Forget a device that left (clears its retained hello/status)")
async def delete_device(site: str, device_id: str, federation: FederationDep,
                        loop: LoopDep) -> dict[str, Any]:
    """The device leaves the inventory and no longer counts towards its site's health.
    An agent that comes back later simply enrols again."""
    return await run_in_threadpool(forget_device, federation, loop, site, device_id)
