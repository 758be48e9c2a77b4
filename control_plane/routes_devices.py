"""Device administration: enrolment, revocation, and forgetting a device that left.

* ``POST /v1/devices/enrollment-tokens`` ``{site, tenant, ttlS?}`` (cluster-admin) →
  ``{token, site, tenant, expiresAt}``: a one-time, expiring enrolment token (404: no
  such devices site; 422: a field is invalid, named).
* ``POST /v1/devices/enroll`` ``{token, deviceId}`` (no bearer token: the enrolment token
  is the credential) → ``{deviceId, site, tenant, brokerUrl, username, password, caPem,
  commandKey}``. 401: unknown token; 409: token already used (replayed), or the device is
  enrolled in another site; 410: token expired; 503: the broker could not be reloaded.
* Both answer 429 (with ``Retry-After``) past ``auth_rate_limit`` requests per client
  address (:func:`control_plane.input_limits.auth_rate_limit`).
* ``DELETE /v1/devices/{site}/{device_id}/credentials`` (cluster-admin) → ``{site,
  deviceId, revoked, revokedAt}``: the device's broker credentials are revoked and the
  broker reloaded, which disconnects it at once. 404: not enrolled there.
* ``DELETE /v1/devices/{site}/{device_id}`` — the devices adapter clears the device's
  retained ``hello`` and ``status`` on the broker and drops it from the inventory, so a
  silent device no longer keeps its site Degraded. 404: no such site or device (or the
  site is not a ``devices`` site); 409: the device is online, or runs submitted to it
  have not ended; 503: the broker is not connected.

Listing is ``GET /v1/devices`` in :mod:`control_plane.routes_nodes`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from adapters.capabilities import DeviceFleet
from continuum.errors import NotFound, TransientError
from control_plane.auth import Role, require
from control_plane.deps import Loop
from control_plane.enrollment import DEVICE_ID, TENANT, EnrollmentRefused
from control_plane.federation import Federation
from control_plane.input_limits import auth_rate_limit
from control_plane.routes_common import EnrollmentDep, FederationDep, LoopDep

router = APIRouter(tags=["nodes"])


require_cluster_admin = require(Role.cluster_admin)
"""The authorisation of the device administration routes (token creation, revocation,
forgetting): a cluster-admin (or admin) token, as control_plane/access.py says too."""


_ADMIN = [Depends(require_cluster_admin)]
_RATE = [Depends(auth_rate_limit)]
_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class EnrollmentTokenRequest(BaseModel):
    """Body of ``POST /v1/devices/enrollment-tokens``."""

    model_config = _CAMEL
    site: str = Field(min_length=1, max_length=63, description="the devices site")
    tenant: str = Field(pattern=TENANT.pattern, description="tenant the device works for")
    ttl_s: float | None = Field(default=None, gt=0, le=30 * 86400,
                                description="lifetime (s); default enrollment_token_ttl_s")


class EnrollRequest(BaseModel):
    """Body of ``POST /v1/devices/enroll``."""

    model_config = _CAMEL
    token: str = Field(min_length=1, max_length=256)
    device_id: str = Field(pattern=DEVICE_ID.pattern,
                           description="this device's id: its broker user and topic level")


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


@router.post("/v1/devices/enrollment-tokens", status_code=201, dependencies=_RATE + _ADMIN,
             summary="Create a one-time device enrolment token for a site and tenant")
async def create_enrollment_token(body: EnrollmentTokenRequest,
                                  enrollment: EnrollmentDep) -> dict[str, Any]:
    """The token is shown only in this answer; give it to ``continuum-agent enroll``."""
    return await run_in_threadpool(enrollment.create_token, body.site, body.tenant, body.ttl_s)


@router.post("/v1/devices/enroll", dependencies=_RATE,
             summary="Exchange an enrolment token for the device's broker credentials")
async def enroll_device(body: EnrollRequest, enrollment: EnrollmentDep) -> dict[str, Any]:
    """No bearer token: the one-time enrolment token is the credential. The password in the
    answer is shown only here."""
    try:
        return await run_in_threadpool(enrollment.enroll, body.token, body.device_id)
    except EnrollmentRefused as e:
        raise HTTPException(e.status, f"token: {e}") from e
    except TransientError as e:
        raise HTTPException(503, str(e)) from e


@router.delete("/v1/devices/{site}/{device_id}/credentials", dependencies=_ADMIN,
               summary="Revoke a device's broker credentials (it is disconnected at once)")
async def revoke_device(site: str, device_id: str,
                        enrollment: EnrollmentDep) -> dict[str, Any]:
    """The device's password leaves the broker's password file and the broker is reloaded;
    it must enrol again (with a new token) to come back."""
    try:
        return await run_in_threadpool(enrollment.revoke, site, device_id)
    except TransientError as e:
        raise HTTPException(503, str(e)) from e


@router.delete("/v1/devices/{site}/{device_id}", dependencies=_ADMIN,
               summary="Forget a device that left (clears its retained hello/status)")
async def delete_device(site: str, device_id: str, federation: FederationDep,
                        loop: LoopDep) -> dict[str, Any]:
    """The device leaves the inventory and no longer counts towards its site's health.
    An agent that comes back later simply enrols again."""
    return await run_in_threadpool(forget_device, federation, loop, site, device_id)
