"""The narrow services the API routers use, and their FastAPI dependencies.

:func:`control_plane.api.create_app` keeps one :class:`Services` on ``app.state``; a
route asks for exactly what it uses, e.g. ``store: Annotated[Store, Depends(get_store)]``
(tests may swap one with ``app.dependency_overrides``). No route sees the ControlPlane.
"""

from __future__ import annotations

from collections.abc import Collection
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from control_plane.actions import Action
from control_plane.artifacts import LocalArtifactStore
from control_plane.auth import Authority
from control_plane.enrollment import Enrollment
from control_plane.federation import Federation
from control_plane.models import ModelService
from control_plane.settings import Settings
from control_plane.store import Store
from control_plane.workflows import WorkflowService
from monitoring.collector import Collector
from monitoring.metrics import ControlPlaneMetrics
from monitoring.topology import TopologyModel


class Loop(Protocol):
    """What the API needs of the reconciler: wake it, hand it an action, see it live, and
    whether this replica leads (:class:`control_plane.leader.LeaderLoop`)."""

    @property
    def last_cycle_at(self) -> float | None: ...

    @property
    def leading(self) -> bool: ...

    def leader_state(self) -> dict[str, Any]: ...

    def wake(self) -> None: ...

    def request(self, action: Action) -> Future[Any]: ...


class DeviceListing(Protocol):
    """What ``GET /v1/devices`` needs: the light index of every fleet's devices, then the
    serialised devices of one page (:class:`control_plane.server.ControlPlane`)."""

    def device_states(self) -> list[tuple[str, str, str]]: ...

    def devices(self, wanted: Collection[tuple[str, str]] | None = None
                ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Services:
    """Everything the routers may use; each route takes only its part."""

    settings: Settings
    store: Store
    federation: Federation
    artifacts: LocalArtifactStore
    collector: Collector
    network: TopologyModel
    metrics: ControlPlaneMetrics
    models: ModelService
    workflows: WorkflowService
    loop: Loop
    devices: DeviceListing
    """The devices of every fleet, as the API lists them (an index, then a page)."""
    enrollment: Enrollment
    auth: Authority
    """Issues and verifies the API's tokens (control_plane/auth.py)."""


def services(request: Request) -> Services:
    s: Services = request.app.state.services
    return s


async def get_settings(request: Request) -> Settings:
    return services(request).settings


async def get_store(request: Request) -> Store:
    return services(request).store


async def get_federation(request: Request) -> Federation:
    return services(request).federation


async def get_artifacts(request: Request) -> LocalArtifactStore:
    return services(request).artifacts


async def get_collector(request: Request) -> Collector:
    return services(request).collector


async def get_network(request: Request) -> TopologyModel:
    return services(request).network


async def get_metrics(request: Request) -> ControlPlaneMetrics:
    return services(request).metrics


async def get_models(request: Request) -> ModelService:
    return services(request).models


async def get_workflows(request: Request) -> WorkflowService:
    return services(request).workflows


async def get_loop(request: Request) -> Loop:
    return services(request).loop


async def get_devices(request: Request) -> DeviceListing:
    return services(request).devices


async def get_auth(request: Request) -> Authority:
    return services(request).auth


async def get_enrollment(request: Request) -> Enrollment:
    return services(request).enrollment
