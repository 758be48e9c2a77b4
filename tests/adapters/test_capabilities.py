"""Optional adapter capabilities are declared protocols (adapters.capabilities)."""

from __future__ import annotations

import pytest

from adapters import registry
from adapters.capabilities import (
    DataSourceCatalog,
    DeviceFleet,
    PartitionStats,
    SupportsCheck,
    conforms,
)
from adapters.devices import DevicesAdapter
from adapters.kubernetes import KubeEdgeAdapter, KubernetesAdapter
from adapters.sim import SimAdapter
from adapters.slurm.adapter import SlurmAdapter
from continuum.model import SiteKind

CAPABILITIES = (SupportsCheck, PartitionStats, DataSourceCatalog, DeviceFleet)
EXPECTED = {
    SimAdapter: set(),
    DevicesAdapter: {DeviceFleet},
    KubernetesAdapter: {SupportsCheck},
    KubeEdgeAdapter: {SupportsCheck, DataSourceCatalog},
    SlurmAdapter: {SupportsCheck, PartitionStats},
}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_adapter_has_exactly_its_declared_capabilities(cls: type) -> None:
    assert {cap for cap in CAPABILITIES if issubclass(cls, cap)} == EXPECTED[cls]


def test_every_registered_kind_is_covered() -> None:
    assert set(registry.available_kinds()) == set(SiteKind)


def test_conforms_names_the_missing_method() -> None:
    class Renamed:
        def device_list(self) -> list[dict[str, object]]:
            return []

        def telemetry(self) -> list[object]:
            return []

        def forget(self, device_id: str) -> None:
            pass

    conforms(SimAdapter)  # nothing declared: nothing to check
    with pytest.raises(TypeError, match=r"Renamed declares DeviceFleet but lacks "
                                        r"device_states, devices$"):
        conforms(Renamed, DeviceFleet)
