"""Who may call which route: :data:`ROUTE_RULES`, the one table every API route is in,
and :func:`enforce`, the app-wide dependency that applies it before the route runs.

A route without a rule is refused (403, fail closed) and fails the test suite
(tests/control_plane/test_auth_matrix.py reads this table against ``/openapi.json``).

* ``PUBLIC`` — no token: ``/healthz``, ``/readyz``, ``/leaderz`` (the replica's role),
  ``/metrics`` (Prometheus scrapes it without credentials; it holds counts and gauges,
  no workflow content or secrets) and
  ``POST /v1/devices/enroll`` (the one-time enrolment token is the credential).
  ``/docs`` and ``/openapi.json`` are not API routes and are public too.
* ``CAPABILITY`` — artifacts: a run's capability or an API token, checked in the route
  itself (control_plane/routes_artifacts.py: a capability in the query, else
  :func:`control_plane.auth.authenticate` and the workflow's tenant).
* ``ANY`` — any valid token; the route may check more (tenancy, per-site-kind roles).
* ``needs(*roles)`` — a valid token holding one of the roles (admin holds all).

``tenant`` rules additionally scope what the route shows to the caller's tenants: an
object of another tenant is a 404 (control_plane/routes_workflows.py, routes_runs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import HTTPException, Request

from control_plane.auth import Role, authenticate_async, check_roles


@dataclass(frozen=True)
class Rule:
    """``kind``: public, capability or bearer; ``roles``: any of these (empty: any valid
    token); ``tenant``: the route shows only the caller's tenants' objects."""

    kind: Literal["public", "capability", "bearer"]
    roles: tuple[Role, ...] = ()
    tenant: bool = False


PUBLIC = Rule("public")
CAPABILITY = Rule("capability")
ANY = Rule("bearer")
ADMIN = Rule("bearer", (Role.admin,))
SITE_ADMINS = Rule("bearer", (Role.hpc_admin, Role.cluster_admin))
"""Site mutations: the per-kind check (hpc-admin for Slurm, cluster-admin for Kubernetes
and devices) is the route's own (control_plane/routes_sites.py)."""
CLUSTER_ADMIN = Rule("bearer", (Role.cluster_admin,))
USER_TENANT = Rule("bearer", (Role.user,), tenant=True)

ROUTE_RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/leaderz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", "/v1/devices/enroll"): PUBLIC,
    ("PUT", "/v1/artifacts/{workflow_id}/{name}"): CAPABILITY,
    ("GET", "/v1/artifacts/{workflow_id}/{name}"): CAPABILITY,
    ("POST", "/v1/workflows"): USER_TENANT,
    ("GET", "/v1/workflows"): USER_TENANT,
    ("GET", "/v1/workflows/{workflow_id}"): USER_TENANT,
    ("DELETE", "/v1/workflows/{workflow_id}"): USER_TENANT,
    ("GET", "/v1/runs"): USER_TENANT,
    ("GET", "/v1/runs/{run_id}"): USER_TENANT,
    ("POST", "/v1/placements:preview"): Rule("bearer", (Role.user,)),
    ("GET", "/v1/models"): ANY,
    ("POST", "/v1/models:retrain"): ADMIN,
    ("GET", "/v1/sites"): ANY,
    ("GET", "/v1/sites/{name}"): ANY,
    ("POST", "/v1/sites"): SITE_ADMINS,
    ("POST", "/v1/sites/{name}/drain"): SITE_ADMINS,
    ("POST", "/v1/sites/{name}/resume"): SITE_ADMINS,
    ("DELETE", "/v1/sites/{name}"): SITE_ADMINS,
    ("GET", "/v1/nodes"): ANY,
    ("GET", "/v1/nodes/{node_id}"): ANY,
    ("GET", "/v1/devices"): ANY,
    ("GET", "/v1/topology"): ANY,
    ("GET", "/v1/data-sources"): ANY,
    ("POST", "/v1/devices/enrollment-tokens"): CLUSTER_ADMIN,
    ("DELETE", "/v1/devices/{site}/{device_id}/credentials"): CLUSTER_ADMIN,
    ("DELETE", "/v1/devices/{site}/{device_id}"): CLUSTER_ADMIN,
    ("POST", "/v1/tokens"): ANY,
    ("GET", "/v1/tokens"): ANY,
    ("DELETE", "/v1/tokens/{token_id}"): ANY,
    ("GET", "/v1/audit"): ADMIN,
}
"""(method, path template as in /openapi.json) → :class:`Rule`."""


def route_key(method: str, path: str) -> tuple[str, str]:
    """The table key of a route: FastAPI's ``{name:path}`` converters are written as
    ``{name}``, as /openapi.json writes them."""
    import re
    return method.upper(), re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def rule_for(method: str, path: str) -> Rule | None:
    return ROUTE_RULES.get(route_key(method, path))


async def enforce(request: Request) -> None:
    """App-wide dependency: apply the route's :class:`Rule` before it runs.

    Raises:
        HTTPException 401: a bearer rule and no valid token.
        HTTPException 403: the token lacks the rule's roles, or the route has no rule.
    """
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    rule = rule_for(request.method, path)
    if rule is None:
        raise HTTPException(403, f"{request.method} {path} has no access rule "
                                 "(control_plane/access.py ROUTE_RULES)")
    if rule.kind == "bearer":
        check_roles(await authenticate_async(request), rule.roles)
    # "capability": the route itself accepts a run capability or an API token


__all__ = ["ROUTE_RULES", "Rule", "enforce", "route_key", "rule_for"]
