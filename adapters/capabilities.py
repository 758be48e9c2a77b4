"""Optional adapter capabilities, declared as protocols.

:class:`adapters.base.Adapter` is what every adapter does. Some adapters can do more,
and the control plane asks for it by capability, never by method name::

    if isinstance(adapter, SupportsCheck):
        adapter.check()

Each protocol is ``runtime_checkable`` (``isinstance`` tests that the methods exist),
and each adapter module declares what it provides with two lines at its end, so that a
renamed or re-typed method fails ``make lint`` (mypy checks the signatures) and the
import (:func:`conforms` checks the names), not a request in production::

    _DECLARED: tuple[type[SupportsCheck], type[PartitionStats]] = (SlurmAdapter, SlurmAdapter)
    conforms(SlurmAdapter, SupportsCheck, PartitionStats)

* :class:`SupportsCheck` — slurm, kubernetes, kubeedge; used by site registration
  (``Federation.register``);
* :class:`PartitionStats` — slurm; the Slurm partition gauges of ``/metrics``;
* :class:`DescribesBackend` — slurm; the ``backend`` of a site's status (``GET /v1/sites``);
* :class:`DataSourceCatalog` — kubeedge; ``GET /v1/data-sources``;
* :class:`DeviceFleet` — devices; ``GET /v1/devices`` and the device telemetry monitoring reads;
* :class:`FindsWork` — slurm; site removal (``Applier.remove_site``) cancels the work of a
  run whose submit answer was lost.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from adapters.base import Handle
from edge_agent.protocol import Telemetry


@runtime_checkable
class SupportsCheck(Protocol):
    """Can say precisely what is wrong with a site before it is registered."""

    def check(self) -> object:
        """Ask the backend what registration needs (reachable, version, permissions).

        The return value, if any, is informational (the Kubernetes adapter returns the
        server version).

        Raises:
            TransientError | AuthError | UnsupportedError | PermanentError: what is wrong,
                in words that name the fix; registration is refused with it.
        """
        ...


@runtime_checkable
class PartitionStats(Protocol):
    """Keeps per-partition statistics of a batch system (Slurm) from its inventory."""

    def partition_stats(self) -> Sequence[Any]:
        """One record per partition as of the last inventory, each with the fields of
        :class:`monitoring.metrics.SlurmPartitionStats` (CPU counts, waits in seconds,
        utilisation 0..1). Does not call the backend."""
        ...


@runtime_checkable
class DescribesBackend(Protocol):
    """Can say which release and API of its backend the site runs."""

    def backend_info(self) -> dict[str, str]:
        """A few ``name: value`` strings (e.g. Slurm's ``slurmRelease``, ``dataParser``)
        as of the last call to the backend; does not call it."""
        ...


@runtime_checkable
class DataSourceCatalog(Protocol):
    """Lists the data sources (KubeEdge Device objects) of a site."""

    def data_sources(self) -> list[dict[str, Any]]:
        """Every data source from the last inventory: ``name``, ``namespace``, ``model``,
        ``protocol``, ``nodeName``, ``node`` (Continuum node id or None), ``location``,
        ``online``. Does not call the backend."""
        ...


@dataclass(frozen=True)
class DeviceTelemetry:
    """A device's latest telemetry as received: ``received_at`` Unix s (our clock)."""

    device_id: str
    location: str
    online: bool
    received_at: float
    telemetry: Telemetry


@runtime_checkable
class DeviceFleet(Protocol):
    """A fleet of devices that report themselves (the MQTT ``devices`` site)."""

    def device_states(self) -> list[tuple[str, str]]:
        """``(device id, state)`` of every known device: what a page is chosen from."""
        ...

    def devices(self, ids: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The known devices (those of ``ids``; None: every one), JSON-ready with camelCase
        keys (``GET /v1/devices``)."""
        ...

    def telemetry(self) -> list[DeviceTelemetry]:
        """The latest telemetry of every device that sent a Hello and telemetry."""
        ...

    def forget(self, device_id: str) -> None:
        """Forget a device that left (its retained announcements cleared).

        Raises:
            NotFound: no such device.
            Conflict: it is online, or runs submitted to it have not ended.
            TransientError: the fleet's broker cannot be reached now.
        """
        ...


@runtime_checkable
class FindsWork(Protocol):
    """Can find the backend work a submit created although its answer never arrived."""

    def find(self, run_id: str) -> Handle | None:
        """The handle of run ``run_id``'s backend work (submitted with request id
        ``run_id``), read from the backend now; None when it has none.

        Raises:
            TransientError | AuthError: the backend could not be asked.
        """
        ...


def conforms(cls: type, *capabilities: type) -> None:
    """Check at import that ``cls`` has every method of each of ``capabilities``.

    Raises:
        TypeError: naming the class, the capability and the missing methods.
    """
    for cap in capabilities:
        if not issubclass(cls, cap):
            missing = sorted(m for m in _members(cap) if not callable(getattr(cls, m, None)))
            raise TypeError(f"{cls.__qualname__} declares {cap.__name__} but lacks "
                            f"{', '.join(missing)}")


def _members(cap: type) -> list[str]:
    return [m for m in vars(cap) if not m.startswith("_") and callable(vars(cap)[m])]


__all__ = ["DataSourceCatalog", "DescribesBackend", "DeviceFleet", "DeviceTelemetry", "FindsWork",
           "PartitionStats",
           "SupportsCheck", "conforms"]
